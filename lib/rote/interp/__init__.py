"""Reading and editing a trained model: where in the model (sites), edits run through nnsight with a
plain-torch twin, the logit lens, LEACE erasure, the instances analysed, edge attribution patching."""
