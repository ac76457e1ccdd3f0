"""Pure math on tensors. Imports torch and the standard library only (see docs/algorithm.md)."""
