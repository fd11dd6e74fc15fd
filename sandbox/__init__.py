"""A toy world with known ground truth, to watch reward hacking happen: a shape-editing task, an editor
pretrained on it, JRM judges trained on its preference pairs, and the gold reward that says what is true. It
plugs into rlkit as a user's code would: a preparation (`prepare: sandbox`) and a reward (`sandbox_gt`)."""
