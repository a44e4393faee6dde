"""Inference: one interface (`engines.base.ImageEngine`), several backends."""
