"""What dynamo traces where compiled code calls kernelkit's ops: their registered torch ops.

A module of its own, above the ops it stands in for (they never import it): `import kernelkit`
runs `substitute_in_compiled_code` once torch._dynamo is imported.
"""

from __future__ import annotations

import functools

from ..kernels import check_activation, torch_activations


def compile_cache_tag() -> str:
    """kernelkit's part of torch's compile-cache key: its version and a digest of the modules
    that define the ops' fake, autograd and autocast rules (a source checkout's edits change it;
    where a module's source cannot be read, a zipped install, the version alone)."""
    import hashlib
    from pathlib import Path

    from .. import arrays
    from .._version import __version__
    from ..kernels import convgeom
    from . import preprocess_args, torch_ops

    digest = hashlib.sha256()
    for module in (torch_ops, convgeom, preprocess_args, arrays):
        try:
            digest.update(Path(module.__file__).read_bytes())
        except (OSError, TypeError):  # (no file: __file__ None or inside an archive)
            digest.update(module.__name__.encode())
    return f"kernelkit-{__version__}-{digest.hexdigest()[:16]}"


def tag_compile_caches() -> None:
    """Add `compile_cache_tag` to ``torch.compiler.config.cache_key_tag``, after a tag the user
    set before torch._dynamo loaded (the environment's ``TORCH_COMPILE_CACHE_KEY_TAG``); a tag
    set in code later replaces both. Why: torch's FX-graph and AOTAutograd caches key a graph on
    its ops' names, not on their registered backward, so after an upgrade of kernelkit a
    training step compiled before ran the old backward formula, loaded "from cache" (an op
    whose `register_autograd` changed gave the old gradient in a second process: torch 2.13).
    The tag keys every graph of the process, a graph without kernelkit's ops too (torch has no
    key per op): a kernelkit upgrade compiles each graph once more, and max-autotune measures
    again. A torch without the setting keeps the old behaviour."""
    import torch.compiler

    config = getattr(torch.compiler, "config", None)
    current = getattr(config, "cache_key_tag", None)
    if not isinstance(current, str):
        return
    tag = compile_cache_tag()
    if tag not in current.split(";"):
        config.cache_key_tag = f"{current};{tag}" if current else tag


@functools.cache
def substitute_in_compiled_code() -> None:
    """What dynamo (torch.compile, torch.export) traces in place of `kernelkit.matmul`,
    `kernelkit.conv2d` and `kernelkit.preprocess` called in the code it compiles: the registered
    op, one node of the graph. Why: dynamo traced into the ops' Python (the plan memo, the knobs,
    the tuner): under fullgraph=True (and strict export) it raised at the first call it could
    not trace, without it it broke the graph about ten times and then failed an internal assert
    ("Guard failed on the same frame it was created"). Registered as polyfills
    (`torch.compiler.substitute_in_graph`), which cost an eager call nothing; a torch without
    that API keeps the old behaviour. `import kernelkit` runs this once torch._dynamo is
    imported (the first torch.compile imports it): registering imports it, 1.1 s that a
    program that never compiles would pay at `import kernelkit`."""
    import torch

    torch._dynamo.assume_constant_result(transforms_active)  # (marks it: see there)
    substitute = getattr(torch.compiler, "substitute_in_graph", None)
    if substitute is None:
        return
    from . import conv2d as conv_module
    from . import matmul as matmul_module
    from . import preprocess as preprocess_module
    from .torch_ops import register_all, split_activation

    register_all()  # (the ops themselves: registered when torch loaded, and once only)
    # (the ops' overloads themselves: dynamo builds the polyfills' globals without a source, and
    # `torch.ops` is not something it can wrap that way)
    ops = torch.ops.kernelkit
    matmul_op, conv2d_op, preprocess_op = (ops.matmul.default, ops.conv2d.default,
                                           ops.preprocess.default)
    tensor, from_numpy = torch.Tensor, torch.from_numpy

    with_torch = matmul_module._with_torch
    vendor_conv = conv_module._vendor().conv2d_forward

    activations = torch_activations()

    def grad_on(*xs):  # (the graph records gradients through the op)
        return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)

    def tensors(*xs):  # numpy arrays in compiled code: as tensors, and the result back (below)
        return [x if x is None or isinstance(x, tensor) else from_numpy(x) for x in xs]

    @substitute(matmul_module.matmul)
    def matmul(a, b, *, bias=None, activation=None, allow_tf32=False):
        if transforms_active():  # torch.compile(torch.func.grad(...)): torch's ops, as in eager
            return with_torch(a, b, bias, activation)
        check_activation("matmul", activation)  # (before any use of its name)
        if a.ndim == 1 or b.ndim == 1:  # (the op takes matrices: the public rule for vectors)
            return matmul_module._with_vectors(a, b, bias, activation, allow_tf32)
        at, bt, biast = tensors(a, b, bias)
        fused, after = split_activation(activation, grad_on(at, bt, biast))
        y = matmul_op(at, bt, biast, fused, allow_tf32)
        y = y if after is None else activations[after](y)
        return y if isinstance(a, tensor) else y.numpy()

    @substitute(conv_module.conv2d)
    def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
               activation=None, layout=None, allow_tf32=False):
        if x.ndim == 3:  # unbatched (C, H, W), as F.conv2d
            return conv_module.conv2d(x[None], weight, bias, stride=stride, padding=padding,
                                      dilation=dilation, groups=groups, activation=activation,
                                      layout=layout, allow_tf32=allow_tf32)[0]
        check_activation("conv2d", activation)
        geo = conv_module._op_geometry("conv2d", x, x.shape, weight.shape, stride, padding,
                                       dilation, groups, layout, traced=True)
        if transforms_active():  # (as matmul's)
            return vendor_conv(x, weight, bias, *geo, activation, layout or "NCHW", allow_tf32)
        xt, weight, bias = tensors(x, weight, bias)
        fused, after = split_activation(activation, grad_on(xt, weight, bias))
        y = conv2d_op(xt, weight, bias, *geo, fused, layout, allow_tf32)
        y = y if after is None else activations[after](y)
        return y if isinstance(x, tensor) else y.numpy()

    @substitute(preprocess_module.preprocess)
    def preprocess(images, *, size, mean, std, crop=None, flip=None, rotate=None, fill=0.0,
                   interpolation="bilinear", antialias=True, channel_order=None,
                   out_dtype="float32", layout="NCHW", stats_unit="input"):
        if not isinstance(images, tensor):
            raise TypeError("preprocess: in code torch.compile or torch.export traces, 'images' "
                            "must be one tensor batch (N, H, W, C), got "
                            f"{type(images).__name__}")
        return preprocess_module._through_registered_op(
            images, size, mean, std, crop, flip, rotate, interpolation, antialias,
            channel_order, out_dtype, layout, stats_unit, op=preprocess_op)


def transforms_active() -> bool:
    """Whether a torch.func transform is active where dynamo traces (torch.compile of
    torch.func.grad(...)): the registered ops there failed ("RuntimeError when making fake
    tensor call"), where eager kernelkit runs torch's own ops (`dispatch.torch_only`), and so
    must the stand-ins above and kernelkit.nn's layers. A constant of the trace
    (`assume_constant_result`, marked once torch._dynamo loads): queried plainly, dynamo made it
    a node of every graph."""
    import torch

    return torch._C._are_functorch_transforms_active()
