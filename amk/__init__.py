"""AMK: search for the fastest correct batch-1 decode megakernel."""
