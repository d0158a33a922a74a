"""Ranks, collectives and process-wide state: the only module that talks to torch.distributed directly.

`deepspeed rlmed/run.py recipe.yaml` starts N ranks that all run the stages in order. The main rank (global
rank 0) alone writes shared artifacts; the others wait at barriers. Between stages the process-wide state that
accelerate, transformers and DeepSpeed keep (accelerate's singletons, transformers' DeepSpeed config that makes
`from_pretrained` partition weights) is reset, so a ZeRO-3 stage can be followed by any other stage.

On a machine without CUDA, accelerate (1.15) sees no backend on the DeepSpeed path and records a single
process, and multi-rank training then fails DeepSpeed's batch-size check. `apply_cpu_shim` fixes exactly that
case; tests/distributed/test_cpu_shim.py fails as soon as accelerate no longer needs it.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# How long a rank waits at a collective for the others. A rank that dies takes its launcher's other ranks
# with it at once; on other nodes this bounds the wait. Minutes, from RLMED_DIST_TIMEOUT_MIN.
DEFAULT_TIMEOUT_MIN = 30


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def _initialized() -> bool:
    import torch.distributed as torch_dist

    return torch_dist.is_available() and torch_dist.is_initialized()


def init() -> None:
    """Join the process group when launched with several ranks (idempotent; a no-op with one process)."""
    if world_size() <= 1 or _initialized():
        return
    import torch
    import torch.distributed as torch_dist

    apply_cpu_shim()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    minutes = float(os.environ.get("RLMED_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN))
    torch_dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
    logger.info("rank %d of %d joined (%s backend, local rank %d)", rank(), world_size(), backend, local_rank())
    if not torch.cuda.is_available():
        release_deepspeed_shm()


def deepspeed_shm_segment() -> Path:
    """The /dev/shm segment DeepSpeed's CPU allreduce creates for this rank (named in its shm.cpp)."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank()}"


def release_deepspeed_shm() -> None:
    """Unlink this rank's DeepSpeed shared-memory segment as soon as every rank has mapped it.

    With the CPU accelerator and all ranks on one machine (the launcher's LOCAL_SIZE), DeepSpeed's communication
    backend creates one 66 MB segment per rank in /dev/shm and never unlinks it (shm.cpp defines shared_close but
    nothing calls it), so every launched CPU run left 66 MB per rank of RAM behind until reboot; a test suite
    filled /dev/shm. DeepSpeed's initialize returns only once this rank has mapped every other rank's segment, so
    after a barrier the names can go: the mappings stay valid, and the memory is freed when the last rank exits,
    even by SIGKILL. With several ranks this initialises DeepSpeed's communication on the process group now
    (what the stages' first DeepSpeed call would do; it then finds it done). With one rank DeepSpeed creates its
    segment in the first stage; `reset_process_state` calls this again after each stage."""
    if os.environ.get("LOCAL_SIZE") != str(world_size()):
        return  # no launcher, or ranks on several machines: DeepSpeed uses no shared memory
    if world_size() > 1:
        try:
            import deepspeed.comm as ds_comm
        except ImportError:
            return
        import torch.distributed as torch_dist

        ds_comm.init_distributed(dist_backend=torch_dist.get_backend(), auto_mpi_discovery=False, verbose=False)
        torch_dist.barrier()
    segment = deepspeed_shm_segment()
    try:
        segment.unlink()
        logger.debug("unlinked %s (mapped by every rank)", segment)
    except FileNotFoundError:
        pass  # not created (yet), or this DeepSpeed build has no shared-memory allreduce


def barrier() -> None:
    if world_size() > 1 and _initialized():
        import torch.distributed as torch_dist

        torch_dist.barrier()


def broadcast(value: Any) -> Any:
    """The main rank's `value` on every rank (any picklable object)."""
    if world_size() <= 1 or not _initialized():
        return value
    import torch.distributed as torch_dist

    holder = [value if is_main() else None]
    torch_dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums of `values` over all ranks (the values themselves with one process)."""
    if world_size() <= 1 or not _initialized():
        return list(values)
    import torch
    import torch.distributed as torch_dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if torch.cuda.is_available():
        tensor = tensor.cuda()
    torch_dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_single_process_env() -> None:
    """With no launcher, give DeepSpeed the rank variables it needs; otherwise it tries MPI discovery and
    fails on a missing mpi4py. Lets `rlmed run` use a DeepSpeed config in one plain process."""
    if "RANK" in os.environ or "LOCAL_RANK" in os.environ:
        return
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())})
    logger.info("no launcher: running DeepSpeed as a single process (rank 0 of 1)")


def _shim_applies() -> bool:
    import torch

    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")
    return not torch.cuda.is_available() and int(os.environ.get("LOCAL_RANK", -1)) != -1 and use_deepspeed


def apply_cpu_shim() -> bool:
    """Make accelerate report ("gloo", MULTI_CPU) for DeepSpeed ranks on a CPU-only machine. Idempotent;
    returns whether the shim is in place. Never applied where CUDA exists."""
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if torch.cuda.is_available():
        return False
    current = PartialState._prepare_backend
    if getattr(current, "_rlmed_shim", False):
        return True

    def _prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        found_backend, distributed_type = current(self, cpu, sagemaker_dp, backend)
        if distributed_type == DistributedType.NO and _shim_applies():
            return "gloo", DistributedType.MULTI_CPU
        return found_backend, distributed_type

    _prepare_backend._rlmed_shim = True  # type: ignore[attr-defined]
    _prepare_backend._original = current  # type: ignore[attr-defined]
    PartialState._prepare_backend = _prepare_backend
    return True


def reset_process_state() -> None:
    """Forget what one stage left in process-wide singletons, keeping the process group itself."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except ImportError:
        pass
    try:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # else the next from_pretrained would partition weights for ZeRO-3
    except ImportError:
        pass
    if world_size() == 1:
        release_deepspeed_shm()  # one launched rank: its segment exists once a stage has used DeepSpeed
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def uses_deepspeed(trainer_fields: dict[str, Any]) -> bool:
    return bool(trainer_fields.get("deepspeed"))
