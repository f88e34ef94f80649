"""CKKS encrypted inference for polyact PANNs, on TenSEAL's SEAL bindings."""
