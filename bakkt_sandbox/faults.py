"""Fault injection per `/partner/v1` operation: which request gets hurt, and how."""

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from bakkt_sandbox.config import FaultSpec

# operationIds of the OpenAPI files, plus the assumed operations of docs/bakkt-contract.md A2-A4.
OPERATIONS = (
    "generateAccessToken",
    "heartbeat",
    "generateLinkUrl",
    "addBankAccount",
    "addManualBankAccount",
    "linkBankAccountAchAsync",
    "unlinkBankAccount",
    "removeFiatAccount",
    "transferFiatCurrency",
    "getTransaction",
    "getTransactions",
    "generateWireInstructions",
    "getFiatAccountBalance",
    "getKycDocumentVerificationDetails",
)


@dataclass(slots=True)
class Fault:
    id: int
    spec: FaultSpec
    rng: random.Random
    seen: int = 0
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.spec.count is not None and self.hits >= self.spec.count

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            **self.spec.model_dump(by_alias=True),
            "seen": self.seen,
            "hits": self.hits,
            "exhausted": self.exhausted,
        }


@dataclass(slots=True)
class Decision:
    latency_ms: int = 0
    before: Fault | None = None
    after: Fault | None = None
    hit: list[Fault] = field(default_factory=list)


class FaultRegistry:
    def __init__(self, default_seed: int) -> None:
        self._default_seed = default_seed
        self._ids = itertools.count(1)
        self.faults: list[Fault] = []

    def add(self, spec: FaultSpec) -> Fault:
        if spec.operation != "*" and spec.operation not in OPERATIONS:
            raise ValueError(
                f"unknown operation {spec.operation!r}; one of {', '.join(OPERATIONS)}"
            )
        seed = self._default_seed if spec.seed is None else spec.seed
        fault = Fault(next(self._ids), spec, random.Random(seed))  # noqa: S311 - not crypto
        self.faults.append(fault)
        return fault

    def remove(self, fault_id: int) -> bool:
        before = len(self.faults)
        self.faults = [f for f in self.faults if f.id != fault_id]
        return len(self.faults) != before

    def clear(self) -> None:
        self.faults = []

    def decide(self, operation: str) -> Decision:
        decision = Decision()
        if not self.faults:
            return decision
        for fault in self.faults:
            spec = fault.spec
            if spec.operation not in ("*", operation) or fault.exhausted:
                continue
            fault.seen += 1
            if fault.seen <= spec.after:
                continue
            if spec.rate < 1.0 and fault.rng.random() >= spec.rate:
                continue
            if spec.mode == "latency":
                fault.hits += 1
                decision.latency_ms += spec.latency_ms
                decision.hit.append(fault)
                continue
            after = spec.mode == "accept_then_drop" or (
                spec.phase == "after" and spec.mode in ("error", "timeout", "drop")
            )
            slot = "after" if after else "before"
            # The first terminal fault wins; later ones neither apply nor count a hit.
            if decision.before is None and decision.after is None:
                fault.hits += 1
                setattr(decision, slot, fault)
                decision.hit.append(fault)
        return decision
