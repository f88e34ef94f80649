"""CKKS encrypted inference for polyact PANNs, on TenSEAL's SEAL bindings.

``compile(pann, input_shape)`` builds a :class:`Plan`; ``plan.client()`` holds the secret key;
``Server.from_bytes(plan.to_bytes(), client.public_context())`` computes on ciphertexts.
"""
from .bundle import ClientBundle, ServerBundle, load_client_bundle, load_server_bundle, save_bundles
from .client import Client, InputRangeWarning
from .compile import Plan, PlanLayout, compile
from .keys import SecretKeyRefused
from .params import CkksParams, ParameterError, choose_params
from .serialization import PayloadError
from .server import Server

__all__ = ["CkksParams", "Client", "ClientBundle", "InputRangeWarning", "ParameterError", "PayloadError", "Plan",
           "PlanLayout", "SecretKeyRefused", "Server", "ServerBundle", "choose_params", "compile", "load_client_bundle",
           "load_server_bundle", "save_bundles"]
