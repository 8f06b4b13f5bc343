"""The served model's knobs as a config search sees them, and the repository they live in: which composing
steps the ensemble has (from the server's own config), each step's instance count, the engine's
max_batch_size and dynamic-batching queue delay, the config.pbtxt text of a trial (Triton's schema:
tritonclient's model_config_pb2 + protobuf text format), and the check that the server runs in explicit
model-control mode on that repository (else a trial could not be loaded)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ..errors import UserError


@dataclass(frozen=True)
class Knobs:
    """One model's settings a trial may change; None: not a knob of that model (kept as it is)."""
    instances: int | None = None
    max_batch_size: int | None = None
    queue_delay_us: int | None = None  # None also when the model has no dynamic batching


@dataclass
class Served:
    """The served model and its repository: step names in order, the engine among them, the original
    config.pbtxt bytes and messages of every model a trial may change (steps, then the ensemble)."""
    model: str
    repository: Path
    steps: list[str]
    engine: str
    ensemble: bool
    original: dict[str, bytes]
    messages: dict[str, mc.ModelConfig]

    def path(self, name: str) -> Path:
        return self.repository / name / "config.pbtxt"

    def knobs(self) -> dict[str, Knobs]:
        return {name: knobs_of(msg, tunable=not (self.ensemble and name == self.model))
                for name, msg in self.messages.items()}

    def order(self) -> list[str]:
        """The models a config names, the ensemble last."""
        return self.steps + [self.model] if self.ensemble else list(self.steps)


def parse(text: str | bytes, where: Path) -> mc.ModelConfig:
    try:
        return text_format.Parse(text.decode() if isinstance(text, bytes) else text, mc.ModelConfig())
    except text_format.ParseError as err:
        raise UserError(f"{where}: not a Triton config.pbtxt ({err})") from None


def knobs_of(cfg: mc.ModelConfig, *, tunable: bool = True) -> Knobs:
    """An ensemble (tunable=False) has only max_batch_size (it must not exceed any step's)."""
    batching = cfg.max_batch_size > 0
    if not tunable:
        return Knobs(max_batch_size=cfg.max_batch_size if batching else None)
    instances = (cfg.instance_group[0].count or 1) if cfg.instance_group else 1  # Triton default: one
    delay = cfg.dynamic_batching.max_queue_delay_microseconds if cfg.HasField("dynamic_batching") else None
    return Knobs(instances, cfg.max_batch_size if batching else None, delay if batching else None)


def with_knobs(cfg: mc.ModelConfig, k: Knobs) -> mc.ModelConfig:
    """A copy of `cfg` with the knobs that are set; preferred batch sizes above a lowered max dropped (Triton
    refuses them)."""
    out = mc.ModelConfig()
    out.CopyFrom(cfg)
    if k.instances is not None:
        if not out.instance_group:
            out.instance_group.add(count=k.instances)
        for group in out.instance_group:
            group.count = k.instances
    if k.max_batch_size is not None:
        out.max_batch_size = k.max_batch_size
        if out.HasField("dynamic_batching"):
            kept = [b for b in out.dynamic_batching.preferred_batch_size if b <= k.max_batch_size]
            del out.dynamic_batching.preferred_batch_size[:]
            out.dynamic_batching.preferred_batch_size.extend(kept)
    if k.queue_delay_us is not None:
        out.dynamic_batching.max_queue_delay_microseconds = k.queue_delay_us
    return out


def config_text(served: Served, name: str, k: Knobs) -> bytes:
    """The config.pbtxt bytes of `name` under knobs `k`: the original bytes themselves when nothing changes
    (so a restored repository is byte-identical)."""
    if k == served.knobs()[name]:
        return served.original[name]
    return text_format.MessageToString(with_knobs(served.messages[name], k)).encode()


def changed(k: Knobs, base: Knobs) -> dict[str, object]:
    return {f: v for f, v in asdict(k).items() if v != getattr(base, f)}


def lowered_ensemble(served: Served, config: dict[str, Knobs]) -> dict[str, Knobs]:
    """The ensemble's max_batch_size down to the engine's when a trial lowers the engine's below it (Triton
    refuses an ensemble that allows bigger batches than a step; the cameras send one frame a request)."""
    if not served.ensemble:
        return config
    ens, eng = config[served.model], config[served.engine]
    base = served.knobs()[served.model].max_batch_size
    if base is not None and eng.max_batch_size is not None:
        config = {**config, served.model: replace(ens, max_batch_size=min(base, eng.max_batch_size))}
    return config


def _engine_of(model: str, steps: list[str]) -> str:
    """The step that runs the network: `<model>_engine` as `tdet repo build` names it, else the middle step."""
    return next((s for s in steps if s == f"{model}_engine"), None) or next(
        (s for s in steps if s.endswith("_engine")), steps[len(steps) // 2])


def check_explicit_mode(client, url: str) -> None:
    """Unloading a model that does not exist is a no-op in explicit mode and refused in the others."""
    from tritonclient.utils import InferenceServerException

    try:
        client.unload_model(f"__tdet_capacity_probe_{os.getpid()}__")
    except InferenceServerException as err:
        if "not allowed" in str(err):
            raise UserError(f"the server at {url} is not in explicit model-control mode, so --search cannot "
                            "reload trial configs: start it with `tdet serve --model-control-mode explicit` "
                            "on the --repository") from None
        raise UserError(f"the server at {url} refuses the model-control API: {err.message()}") from None


def read_served(client, url: str, model: str, repository: Path) -> Served:
    """The served model's steps from the server, their config.pbtxt from `repository` (UserError when the
    repository does not hold them, i.e. it is not the one the server serves)."""
    from tritonclient.utils import InferenceServerException

    if not repository.is_dir():
        raise UserError(f"--repository {repository}: no such folder")
    try:
        served_cfg = client.get_model_config(model).config
    except InferenceServerException as err:
        raise UserError(f"model {model!r} is not served at {url}: {err.message()}") from None
    ensemble = served_cfg.platform == "ensemble"
    steps = [s.model_name for s in served_cfg.ensemble_scheduling.step] if ensemble else [model]
    names = steps + [model] if ensemble else steps
    original, messages = {}, {}
    for name in names:
        path = repository / name / "config.pbtxt"
        if not path.is_file():
            raise UserError(f"--repository {repository} has no {name}/config.pbtxt: it is not the repository the "
                            f"server at {url} serves {model!r} from")
        original[name] = path.read_bytes()
        messages[name] = parse(original[name], path)
    return Served(model, repository, steps, _engine_of(model, steps), ensemble, original, messages)
