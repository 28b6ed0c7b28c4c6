"""Which versions of each model serve: ``TSM_VERSION_POLICY``, parsed once (Triton's version policy)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VersionPolicy:
    """``NAME=latest:N`` or ``NAME=specific:V1,V2`` per model (``*``: every model); default latest:1."""

    rules: dict[str, tuple[str, str]]  # name -> ("latest", "N") or ("specific", "V1,V2")

    @classmethod
    def parse(cls, rules: list[str]) -> VersionPolicy:
        parsed = {}
        for rule in rules:
            name, _, policy = rule.partition("=")
            kind, _, arg = policy.partition(":")
            ok = kind == "latest" and arg.isdigit() and int(arg) >= 1
            ok = ok or (kind == "specific" and all(v.strip() for v in arg.split(",")))
            if not name or not ok:
                raise ValueError(f"version_policy entry {rule!r}: write NAME=latest:N or NAME=specific:V1,V2")
            parsed[name] = (kind, arg)
        return cls(parsed)

    def rule(self, name: str) -> tuple[str, str]:
        return self.rules.get(name, self.rules.get("*", ("latest", "1")))

    def serves_one_version(self, name: str) -> bool:
        kind, arg = self.rule(name)
        return arg == "1" if kind == "latest" else "," not in arg

    def versions_to_serve(self, name: str, versions: list[str]) -> list[str]:
        """The versions of ``name`` the policy serves, oldest first (``versions``: the store's, oldest first)."""
        kind, arg = self.rule(name)
        if kind == "latest":
            return versions[-int(arg) :]
        wanted = arg.split(",")
        missing = [v for v in wanted if v not in versions]
        if missing:
            have = ", ".join(versions)
            raise ValueError(f"version_policy asks for version(s) {', '.join(missing)} of {name}; the store has {have}")
        return [v for v in versions if v in wanted]
