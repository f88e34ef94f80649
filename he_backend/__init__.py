"""CKKS encrypted inference for polyact PANNs, on TenSEAL's SEAL bindings.

``compile(pann, input_shape)`` builds a :class:`Plan`; ``plan.client()`` holds the secret key;
``Server.from_bytes(plan.to_bytes(), client.public_context())`` computes on ciphertexts;
plans deeper than secure parameters (or ``max_levels``) run in refresh rounds with the client:
``run_interactive(client, server, payload)`` (:mod:`he_backend.protocol.refresh`).
"""
from .eval.params import CkksParams, ParameterError, choose_params
from .lowering.compiler import compile
from .lowering.segments import CostModel
from .protocol.bundle import ClientBundle, ServerBundle, load_client_bundle, load_server_bundle, save_bundles
from .protocol.client import Client, InputRangeWarning
from .protocol.keys import SecretKeyRefused
from .protocol.plan import Plan
from .protocol.plan_layout import PlanLayout
from .protocol.refresh import MaskPolicy, Rounds, run_interactive
from .protocol.serialization import PayloadError
from .protocol.server import RefreshRequired, Server

__all__ = ["CkksParams", "Client", "ClientBundle", "CostModel", "InputRangeWarning", "MaskPolicy", "ParameterError",
           "PayloadError", "Plan", "PlanLayout", "RefreshRequired", "Rounds", "SecretKeyRefused", "Server", "ServerBundle",
           "choose_params", "compile", "load_client_bundle", "load_server_bundle", "run_interactive", "save_bundles"]
