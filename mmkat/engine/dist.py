"""Distributed runs on machines without a GPU (``tools/dist_train.sh`` / ``dist_test.sh`` on CPUs).

mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` unconditionally, and its default DDP
wrapper passes ``device_ids=[LOCAL_RANK]``, which DDP refuses for a CPU model. When the tools are started
by torchrun (``--launcher pytorch``) and no CUDA device is visible, :func:`setup_cpu_distributed` starts
the process group itself with gloo (mmengine's Runner then skips its own ``init_dist``) and asks for a DDP
wrapper without device ids. On GPU machines nothing changes.
"""
import torch


def setup_cpu_distributed(cfg) -> bool:
    """Prepare ``cfg`` (in place) for a CPU run under torchrun. Returns True when it did."""
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    import torch.distributed as dist
    if not dist.is_initialized():
        import atexit
        dist.init_process_group(backend='gloo')  # rank, world size and address from torchrun's env://
        # gloo's threads must be joined before the interpreter tears down, or the process may abort at exit
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                                     find_unused_parameters=cfg.get('find_unused_parameters', False))
    return True
