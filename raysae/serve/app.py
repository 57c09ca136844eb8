"""Building the Serve applications: the ingress over the store, composed with the text and graph
deployments; and the bundled chat model, its own application at ``{route_prefix}/llm``.

``build_app(config)`` returns the bound application; ``app_builder(args)`` is the builder a Serve config
file names (``import_path: raysae.serve.app:app_builder``, see jobs/serve_config.yaml; the chat model:
``chat_app_builder``); ``start_local`` runs both on the connected Ray cluster with the proxy bound to
``config.host:config.port``.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from raysae.config.autointerp import LOCAL_CHAT_ROUTE
from raysae.config.base import ConfigError, format_validation_error, read_config_file
from raysae.config.serve import ServeConfig
from raysae.serve.activations import ActivationModel
from raysae.serve.api import FeatureAPI
from raysae.serve.chat import ChatModel
from raysae.serve.graph_model import GraphModel

# Builder arguments that are not ServeConfig fields: shorthands for nested ones, and a config file.
_SHORTHANDS = {"mongo_uri": ("store", "uri"), "db": ("store", "db")}


def build_app(config: ServeConfig) -> Application:
    """The ingress (``FeatureAPI``) bound to ``config``, with ``ActivationModel`` behind a handle when
    ``config.text_endpoint`` and ``GraphModel`` when ``config.graph_endpoint``; replica counts and CPU
    reservations come from ``config`` (unset ``api_replicas``: from the cluster's CPUs). The chat model
    is its own application (``build_chat_app``)."""
    model = graphs = None
    if config.graph_endpoint:
        graphs = GraphModel.options(
            num_replicas=config.graph_replicas,
            max_ongoing_requests=config.graph_max_ongoing_requests,
            ray_actor_options={"num_cpus": config.graph_num_cpus, "num_gpus": config.graph_num_gpus},
        ).bind(config)
    if config.text_endpoint:
        model = ActivationModel.options(
            num_replicas=config.model_replicas,
            max_ongoing_requests=config.model_max_ongoing_requests,
            ray_actor_options={"num_cpus": config.model_num_cpus, "num_gpus": config.model_num_gpus},
        ).bind(config)
    api = FeatureAPI.options(
        num_replicas=config.ingress_replicas(cluster_cpus()),
        max_ongoing_requests=config.api_max_ongoing_requests,
        ray_actor_options={"num_cpus": config.api_num_cpus},
    )
    return api.bind(config, model, graphs)


def cluster_cpus() -> float | None:
    """CPUs of the connected Ray cluster (``serve deploy`` builds the app on it), else of this machine."""
    if ray.is_initialized():
        return float(ray.cluster_resources().get("CPU", 0)) or None
    return float(os.cpu_count() or 0) or None


def build_chat_app(config: ServeConfig) -> Application:
    """The bundled chat model (OpenAI-compatible) that the explain route calls when no other endpoint
    is configured; served at ``{route_prefix}/llm`` (``chat_route``)."""
    return ChatModel.options(
        num_replicas=config.chat_replicas, ray_actor_options={"num_cpus": config.chat_num_cpus}
    ).bind(config.model.model_dump())


def chat_route(config: ServeConfig) -> str:
    prefix = "" if config.route_prefix == "/" else config.route_prefix
    return f"{prefix}{LOCAL_CHAT_ROUTE}"


def config_from_args(args: dict[str, Any]) -> ServeConfig:
    """A ServeConfig from Serve builder arguments: ServeConfig fields, plus ``config`` (a YAML/TOML/JSON
    ServeConfig file the other arguments override), ``mongo_uri`` (store.uri) and ``db`` (store.db).

    ``host``/``port`` are refused: under ``serve deploy`` the file's ``http_options`` decide them.
    """
    args = dict(args or {})
    for key in ("host", "port"):
        if key in args:
            raise ConfigError(
                f"application argument {key!r} has no effect under serve deploy; set http_options.{key} "
                "at the top of the Serve config file instead"
            )
    source = "application args"
    data: dict[str, Any] = {}
    if args.get("config") is not None:
        source = str(args["config"])
        data = read_config_file(source)
    args.pop("config", None)
    for short, (section, field) in _SHORTHANDS.items():
        if short in args:
            value = args.pop(short)
            if value is not None:
                data[section] = {**(data.get(section) or {}), field: value}
    for key, value in args.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from err


def app_builder(args: dict[str, Any]) -> Application:
    """Application builder for Serve config files and ``serve run raysae.serve.app:app_builder``."""
    return build_app(config_from_args(args))


def chat_app_builder(args: dict[str, Any]) -> Application:
    """Builder of the chat application for Serve config files (route_prefix ``/llm``)."""
    return build_chat_app(config_from_args(args))


def start_local(config: ServeConfig) -> DeploymentHandle:
    """Start Serve's proxy on ``config.host:config.port`` (if Serve is not running yet) and deploy the
    application on the connected Ray cluster; returns once every replica is up."""
    serve.start(http_options={"host": config.host, "port": config.port})
    if config.deploys_chat:
        serve.run(
            build_chat_app(config),
            name=f"{config.app_name}-llm",
            route_prefix=chat_route(config),
            blocking=False,
        )
    return serve.run(
        build_app(config), name=config.app_name, route_prefix=config.route_prefix, blocking=False
    )
