"""The render stage: the report plan, page encoding, view-models and pages. Reads only the store; never imports
torch or transformers, so a capture made on a GPU machine renders anywhere."""
