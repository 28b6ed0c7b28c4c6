"""Fair share between clients: the weighted turns of FairQueue, who a client is, and the queue
discipline seen through a real Batcher (one client's backlog never in front of another's next clip)."""

from __future__ import annotations

import asyncio
from collections import Counter

from pydantic import SecretStr

from service.core.auth import Access, Identify
from service.core.fair import ANONYMOUS, BULK_SHARE, Client, FairQueue, flow_weights, key_name, priority_of
from service.inference.batching import Batcher, BatcherConfig, BatchInfo
from tests.support.models import make_runner, random_clips


def drain(queue: FairQueue[str], n: int) -> list[str]:
    return [queue.pop()[1] for _ in range(n)]


def test_flows_take_turns_by_weight_and_items_of_a_flow_take_turns() -> None:
    queue: FairQueue[str] = FairQueue(flow_weights({"heavy": 1.0, "paying": 3.0}))
    queue.push("interactive/heavy", "h1", 40)  # a backlog
    queue.push("interactive/light", "l1", 1)  # one clip, after it
    assert drain(queue, 2) == ["h1", "l1"], "the light client's clip is served in the first turn after it came"
    queue.push("interactive/paying", "p1", 30)
    served = Counter(drain(queue, 24))
    assert served["p1"] == 18 and served["h1"] == 6, "weight 3 gets three times the share of weight 1"
    queue.push("interactive/heavy", "h2", 2)
    queue.push("interactive/heavy", "h3", 1)
    assert [x for x in drain(queue, len(queue)) if x != "p1"][:4] == ["h1", "h2", "h3", "h1"]
    assert not queue and list(queue) == []


def test_bulk_gets_a_quarter_and_removing_a_request_takes_its_units() -> None:
    queue: FairQueue[str] = FairQueue(flow_weights({}))
    queue.push("bulk/a", "job", 100)
    queue.push("interactive/a", "call", 100)
    served = Counter(drain(queue, 50))
    assert served["call"] / served["job"] == 1 / BULK_SHARE
    assert queue.remove("bulk/a", "job") == 100 - served["job"] and queue.remove("bulk/a", "job") == 0
    assert len(queue) == 100 - served["call"] and set(queue) == {"call"}


def test_a_client_is_its_key_by_name_or_a_gateways_header_and_priority_is_a_class() -> None:
    keyed = Identify(Access([SecretStr("s3cret"), SecretStr("other")], []), client_header="x-team")
    assert keyed({"authorization": "Bearer s3cret"}) == Client(key_name("s3cret"))
    assert key_name("s3cret").startswith("key-") and "s3cret" not in key_name("s3cret")
    assert keyed({"x-api-key": "wrong", "x-team": "spoof"}) == ANONYMOUS, "with keys, the header is not trusted"
    gateway = Identify(Access([], []), client_header="X-Team")
    assert gateway({"x-team": " vision/ops "}).name == "vision_ops"
    assert gateway({"x-priority": "bulk"}) == Client("anonymous", "bulk")
    assert [priority_of(v) for v in ("bulk", "2", "1", "0", "", None, "interactive")] == [
        "bulk", "bulk", "interactive", "interactive", "interactive", "interactive", "interactive"]  # fmt: skip


def test_a_batch_serves_the_light_clients_clip_before_the_heavy_backlog() -> None:
    """16 requests of a heavy client queued, then one of a light client: first come, first served
    would put the light clip behind four batches of four."""

    async def main() -> tuple[list[BatchInfo], int]:
        runner = make_runner(None, max_batch_clips=4)
        batches: list[BatchInfo] = []
        batcher = Batcher(runner, BatcherConfig(max_delay_ms=200.0), on_batch=batches.append)
        await batcher.start()
        try:
            heavy, light = Client("heavy"), Client("light")

            async def one(client: Client, seed: int) -> int:
                with batcher.reserve(1, client) as r:
                    await batcher.infer(random_clips(1, seed=seed), r)
                    return r.id

            tasks = [asyncio.create_task(one(heavy, i)) for i in range(16)]
            await asyncio.sleep(0)
            light_task = asyncio.create_task(one(light, 99))
            await asyncio.gather(*tasks)
            return batches, await light_task
        finally:
            await batcher.stop()
            runner.close()

    batches, light_id = asyncio.run(asyncio.wait_for(main(), 60))
    first = next(i for i, b in enumerate(batches) if light_id in b.request_ids)
    assert first <= 1, [b.request_ids for b in batches]  # the batch being formed, or the next one


def test_cpu_batches_shrink_to_a_chunk_while_two_clients_have_work() -> None:
    """A CPU forward pass of a full batch takes seconds: while another client waits, batches are the
    shared chunk, so its wait is about one such pass; a client alone gets full batches."""

    async def sizes(clients: list[Client]) -> list[int]:
        runner = make_runner(None, max_batch_clips=8)
        runner.shared_chunk = 2  # what warm-up measures on a slow CPU
        batches: list[BatchInfo] = []
        batcher = Batcher(runner, BatcherConfig(max_delay_ms=200.0), on_batch=batches.append)
        await batcher.start()
        try:
            reservations = [batcher.reserve(8, client) for client in clients]
            await asyncio.gather(*(batcher.infer(random_clips(8, seed=i), r) for i, r in enumerate(reservations)))
            for r in reservations:
                r.release()
            return [b.size for b in batches]
        finally:
            await batcher.stop()
            runner.close()

    assert asyncio.run(sizes([Client("a")])) == [8]
    assert set(asyncio.run(sizes([Client("a"), Client("b")]))) == {2}
