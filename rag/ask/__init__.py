"""Asking: `service` (AskService: validation, cache, conversation thread, answer) runs the
`pipeline` of stages, one module each: `rewrite` (follow-up questions), `retrieve` (dense +
BM25), `evidence` (sentences that answer), `prompt` (budgeted), `generate` (streamed through
`gate`: each sentence once it passed), `check` (each sentence against its sources). `context` is
what the stages share, `ranking` the fusion they both use, `answer` the assembly of the result,
`conversations` the policy of threads."""
