"""Mixed precision by the config's word (`train.amp`, `eval.amp`: none | bf16 | fp16), one table for the training
loop and every evaluator."""
from contextlib import nullcontext

import torch

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, amp: str):
    """torch.autocast to the dtype `amp` names on `device_type`, or a context that changes nothing for 'none'."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext()
