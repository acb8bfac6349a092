"""
# A process that builds an optimizer without importing `torch._dynamo`

PyTorch wraps some `torch.optim.Optimizer` methods (`add_param_group`, called by every optimizer's
constructor, and others) in `torch._disable_dynamo`, which imports `torch._dynamo` on the first call only to
mark the method as not to be compiled. That import costs ~1.7 s of CPU (2.0 s → 3.7 s for `import torch`
here), paid by every training process: each run of a sweep, each real process of the tests.
Nothing in this app uses `torch.compile`, so `skip_dynamo_import()` gives those methods the answer the import
would have cached (their undecorated function). That is enough for labml_nn's optimizers (Adam, AdamW, ...:
the families' default); torch's own (`torch.optim.SGD`, ...) import `torch._dynamo` in every `step` anyway.
torch has no switch for this (`TORCHDYNAMO_DISABLE` is read after the import), hence the small patch; it does
nothing once `torch._dynamo` is imported or where torch's wrapper changes shape.
"""
import sys

import torch
import torch._compile


def skip_dynamo_import() -> int:
    """Marks the `_disable_dynamo`-wrapped methods of `torch.optim.Optimizer` as already disabled; returns how
    many (0 where `torch._dynamo` is imported already, or torch wraps them differently)."""
    if 'torch._dynamo' in sys.modules:
        return 0
    # the code object of `_disable_dynamo`'s wrapper: a method whose code is this one is wrapped by it
    wrapper_code = torch._compile._disable_dynamo(lambda: None).__code__
    patched = 0
    for method in vars(torch.optim.Optimizer).values():
        inner = getattr(method, '__wrapped__', None)
        if getattr(method, '__code__', None) is wrapper_code and inner is not None:
            # what the wrapper caches after importing torch._dynamo is `torch._dynamo.disable(inner)`; without
            # torch.compile in play that is `inner` itself
            setattr(inner, '__dynamo_disable', inner)
            patched += 1
    return patched
