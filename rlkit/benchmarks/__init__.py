"""Editing benchmarks as people judge editors: GEdit-Bench and ImgEdit-Bench Basic read as published (items),
asked of any OpenAI-compatible judge with a versioned rubric (rubrics, judging), scored as each benchmark's own
statistics do (scoring), for trained runs and base editors side by side (targets, evaluate: `rlkit eval`) and
inside a run at every evaluation (`eval.benchmark`)."""
