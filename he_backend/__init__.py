"""CKKS encrypted inference for polyact PANNs, on TenSEAL's SEAL bindings.

``compile(pann, input_shape)`` builds a :class:`Plan`; ``plan.client()`` holds the secret key;
``Server.from_bytes(plan.to_bytes(), client.public_context())`` computes on ciphertexts.
"""
from .client import Client
from .compile import Plan, PlanLayout, compile
from .keys import SecretKeyRefused
from .params import CkksParams, ParameterError, choose_params
from .serialization import PayloadError
from .server import Server

__all__ = ["CkksParams", "Client", "ParameterError", "PayloadError", "Plan", "PlanLayout", "SecretKeyRefused", "Server",
           "choose_params", "compile"]
