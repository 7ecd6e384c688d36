"""What really serves an oracle's model name, and the oracle's data version made from it.

A name such as `gpt-4o-mini` moves to new snapshots, an Ollama tag is pulled again, a vLLM
server restarts with other weights under the same served name: our own settings do not
change, the replies do. The endpoint says what served a request (the completion's `model`
and `system_fingerprint`, vLLM's `root`, Ollama's digest; for the embedded model, a hash of
its file); that served identity is part of the oracle's data version. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reflection_assets.errors import SettingsError
from reflection_assets.method.digests import json_digest

# on: the served model, the serving configuration (system_fingerprint) and what the model
# listing says; model: the same without system_fingerprint (OpenAI's changes with the
# serving cluster); off: only our own settings count.
PROBE_ON, PROBE_MODEL, PROBE_OFF = "on", "model", "off"
PROBE_SETTINGS = (PROBE_ON, PROBE_MODEL, PROBE_OFF)


def check_probe(value: str) -> str:
    if value not in PROBE_SETTINGS:
        raise SettingsError(f"probe {value!r}: expected one of {', '.join(PROBE_SETTINGS)}")
    return value


@dataclass(frozen=True)
class ServedIdentity:
    """What served the oracle's model name when it was probed."""

    model: str | None  # the completion's `model`: the snapshot the name resolved to
    system_fingerprint: str | None  # the serving configuration, where the provider says it
    details: tuple[tuple[str, str], ...] = ()  # the listing's facts: vLLM root, Ollama digest, a model file's hash
    probe: str = PROBE_ON  # on or model: whether system_fingerprint counts

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", tuple(sorted(self.details)))  # one spelling per identity

    @property
    def digest(self) -> str:
        """16 hex digits naming the snapshot; equal identities, equal digests."""
        counted = {
            "model": self.model,
            "system_fingerprint": self.system_fingerprint if self.probe == PROBE_ON else None,
            **dict(self.details),
        }
        return json_digest(counted, ascii=True)

    def describe(self) -> str:
        parts = [self.model or "(no model named)"]
        if self.system_fingerprint:
            parts.append(f"system_fingerprint {self.system_fingerprint}")
        parts += [f"{name} {value}" for name, value in self.details]
        return ", ".join(parts)

    def as_metadata(self) -> dict[str, str]:
        """Flat text fields, for observation metadata; from_metadata reads them back."""
        facts = {
            "served_identity": self.digest,
            "served_model": self.model or "",
            "system_fingerprint": self.system_fingerprint or "",
            "probe": self.probe,
        }
        facts.update({f"served_{name}": value for name, value in self.details})
        return facts

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object]) -> ServedIdentity | None:
        if not metadata.get("served_identity"):
            return None
        own = {"served_identity", "served_model"}
        details = tuple(
            (name[len("served_") :], str(value))
            for name, value in sorted(metadata.items())
            if name.startswith("served_") and name not in own
        )
        identity = cls(
            model=str(metadata.get("served_model") or "") or None,
            system_fingerprint=str(metadata.get("system_fingerprint") or "") or None,
            details=details,
            probe=str(metadata.get("probe") or PROBE_ON),
        )
        # A record written by other code (an older version) is not trusted as this one.
        return identity if identity.digest == metadata["served_identity"] else None


def oracle_data_version(fingerprint: str, identity: ServedIdentity | None) -> str:
    """The oracle's data version: our settings' fingerprint alone when nothing was probed (as
    before the probe existed), else a hash of it and the served identity."""
    if identity is None:
        return fingerprint
    return json_digest({"fingerprint": fingerprint, "served": identity.digest}, ascii=True)


def served_change(before: Mapping[str, object], after: Mapping[str, object]) -> str | None:
    """Why two observations of one oracle differ, in words, when our settings did not: the
    served model, or the serving configuration. None when our settings changed (or nothing
    is known of what served either)."""
    if before.get("fingerprint") != after.get("fingerprint"):
        return None
    old, new = before.get("served_model") or "", after.get("served_model") or ""
    if not before.get("served_identity") or not after.get("served_identity"):
        return None
    if old != new:
        return f"served model {old or '?'} → {new or '?'}"
    if before.get("served_identity") != after.get("served_identity"):
        return "serving configuration changed"
    return None
