"""Convolutional networks' train steps beside PyTorch eager and JAX jit: bench.py's workload 10.

    python bench/bench.py --only 10 [--quick]

10a. A ResNet-18-style and a MobileNet-v2-style network written in the DSL
(bench/models/*.nn, 3x32x32 images, batch 8), one SGD step each on chainrule's numpy and
onnxruntime backends, beside the same network in PyTorch eager and in JAX jit, written once
over a table of ops. All start from the chainrule model's params, read by their names, so the
losses of their first steps agree, which the table's last column shows.

10b. torchvision's ResNet-18 and MobileNet-v2 (random weights, 10 classes), exported to ONNX
once into bench/.cache, imported with `chainrule.import_onnx(..., loss="cross_entropy")`, and
their SGD step (batch 8, 3x64x64) timed beside PyTorch eager's forward, backward and SGD on
the module itself, in training mode as the imported step is (batch norm on the batch's
statistics).

The systems of a table are timed in turn, call by call (bench.interleaved_medians), so a burst
of load from other processes falls on each alike; JAX on its own afterwards. PyTorch and JAX
run their default threads, and PyTorch one thread in a row of its own.
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np

import chainrule
from bench import LR_VALUE, ROOT, interleaved_medians, optional, thread_settings
from chainrule.passes.optimizers import OptimizerSpec
from chainrule.train import TrainConfig, Trainer

MODELS = os.path.join(ROOT, "bench", "models")
CACHE = os.path.join(ROOT, "bench", ".cache")
CLASSES = 10
EPS = 1e-5
MOMENTUM = 0.1
# The stride of each block, as the .nn files make them (the channels follow from the params).
RESNET_STAGE_STRIDES = (1, 2, 2, 2)
MOBILENET_BLOCK_STRIDES = (1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)


# ---- the networks, written once over a table of ops ------------------------------------------

def resnet_logits(ops, x):
    h = ops.relu(ops.batch_norm(ops.conv(x, "conv1"), "bn1"))
    for stage, stride in enumerate(RESNET_STAGE_STRIDES, 1):
        h = basic_block(ops, h, f"layer{stage}.0", stride)
        h = basic_block(ops, h, f"layer{stage}.1", 1)
    return ops.linear(ops.global_avg_pool(h), "fc")


def basic_block(ops, x, name, stride):
    h = ops.relu(ops.batch_norm(ops.conv(x, f"{name}.conv1", stride), f"{name}.bn1"))
    h = ops.batch_norm(ops.conv(h, f"{name}.conv2"), f"{name}.bn2")
    shortcut = x
    if f"{name}.downsample.0.weight" in ops.params:
        shortcut = ops.batch_norm(ops.conv(x, f"{name}.downsample.0", stride),
                                  f"{name}.downsample.1")
    return ops.relu(h + shortcut)


def mobilenet_logits(ops, x):
    h = ops.relu6(conv_bn(ops, x, "stem"))
    for index, stride in enumerate(MOBILENET_BLOCK_STRIDES):
        h = inverted_residual(ops, h, f"blocks.{index}", stride)
    h = ops.relu6(conv_bn(ops, h, "head"))
    return ops.linear(ops.global_avg_pool(h), "fc")


def inverted_residual(ops, x, name, stride):
    h = x
    if f"{name}.expansion.conv.weight" in ops.params:
        h = ops.relu6(conv_bn(ops, h, f"{name}.expansion"))
    h = conv_bn(ops, ops.relu6(conv_bn(ops, h, f"{name}.depthwise", stride)),
                f"{name}.projection")
    return x + h if h.shape == x.shape else h


def conv_bn(ops, x, name, stride=1):
    return ops.batch_norm(ops.conv(x, f"{name}.conv", stride), f"{name}.bn")


# (title, .nn file, logits function)
DSL_NETWORKS = (("ResNet-18-style", "resnet18_cifar.nn", resnet_logits),
                ("MobileNet-v2-style", "mobilenet_v2_cifar.nn", mobilenet_logits))


class TorchOps:
    """The ops of the networks above in PyTorch's functional API; batch norm moves the
    running statistics in place, as the DSL's does."""

    def __init__(self, torch, params: dict):
        self.functional = torch.nn.functional
        self.params = params

    def conv(self, x, name, stride=1):
        weight = self.params[f"{name}.weight"]
        return self.functional.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2,
                                      groups=x.shape[1] // weight.shape[1])

    def batch_norm(self, x, name):
        p = self.params
        return self.functional.batch_norm(
            x, p[f"{name}.running_mean"], p[f"{name}.running_var"], p[f"{name}.weight"],
            p[f"{name}.bias"], training=True, momentum=MOMENTUM, eps=EPS)

    def relu(self, x):
        return self.functional.relu(x)

    def relu6(self, x):
        return self.functional.relu6(x)

    def global_avg_pool(self, x):
        return x.mean(dim=(2, 3))

    def linear(self, x, name):
        return self.functional.linear(x, self.params[f"{name}.weight"],
                                      self.params[f"{name}.bias"])


class JaxOps:
    """The same ops in JAX; batch norm records each layer's next running statistics in
    `moved`, which the jitted step returns."""

    def __init__(self, jax, params: dict, stats: dict):
        self.jax, self.jnp = jax, jax.numpy
        self.params = {**params, **stats}
        self.moved = {}

    def conv(self, x, name, stride=1):
        weight = self.params[f"{name}.weight"]
        pad = weight.shape[-1] // 2
        return self.jax.lax.conv_general_dilated(
            x, weight, (stride, stride), ((pad, pad), (pad, pad)),
            feature_group_count=x.shape[1] // weight.shape[1])

    def batch_norm(self, x, name):
        p, jnp = self.params, self.jnp
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        count = x.size // x.shape[1]
        self.moved[f"{name}.running_mean"] = ((1 - MOMENTUM) * p[f"{name}.running_mean"]
                                              + MOMENTUM * mean)
        self.moved[f"{name}.running_var"] = ((1 - MOMENTUM) * p[f"{name}.running_var"]
                                             + MOMENTUM * var * count / (count - 1))
        normal = (x - mean[None, :, None, None]) / jnp.sqrt(var[None, :, None, None] + EPS)
        return normal * p[f"{name}.weight"][None, :, None, None] \
            + p[f"{name}.bias"][None, :, None, None]

    def relu(self, x):
        return self.jax.nn.relu(x)

    def relu6(self, x):
        return self.jnp.clip(x, 0.0, 6.0)

    def global_avg_pool(self, x):
        return x.mean(axis=(2, 3))

    def linear(self, x, name):
        return x @ self.params[f"{name}.weight"].T + self.params[f"{name}.bias"]


def is_statistic(name: str) -> bool:
    return name.endswith(("running_mean", "running_var"))


def torch_step(torch, logits_of, params: dict):
    """An SGD step of `logits_of` in PyTorch eager on copies of `params`; returns the loss."""
    tensors = {name: torch.tensor(value, requires_grad=not is_statistic(name))
               for name, value in params.items()}
    ops = TorchOps(torch, tensors)
    return torch_sgd_step(torch, lambda x: logits_of(ops, x),
                          [tensor for name, tensor in tensors.items() if not is_statistic(name)])


def torch_sgd_step(torch, logits_of, trained: list):
    """PyTorch eager's forward, backward and SGD update of the `trained` tensors."""
    def step(x, y):
        loss = torch.nn.functional.cross_entropy(logits_of(x), y)
        loss.backward()
        with torch.no_grad():
            for tensor in trained:
                tensor -= LR_VALUE * tensor.grad
                tensor.grad = None
        return float(loss.detach())
    return step


def jax_step(jax, logits_of, params: dict):
    """The same step as one jitted function of params, statistics and batch."""
    jnp = jax.numpy
    state = {"params": {k: jnp.asarray(v) for k, v in params.items() if not is_statistic(k)},
             "stats": {k: jnp.asarray(v) for k, v in params.items() if is_statistic(k)}}

    def loss_of(trained, stats, x, y):
        ops = JaxOps(jax, trained, stats)
        log_p = jax.nn.log_softmax(logits_of(ops, x), axis=1)
        return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1)), ops.moved

    @jax.jit
    def update(trained, stats, x, y):
        (loss, moved), grads = jax.value_and_grad(loss_of, has_aux=True)(trained, stats, x, y)
        return loss, jax.tree_util.tree_map(lambda w, g: w - LR_VALUE * g, trained, grads), moved

    def step(x, y):
        loss, state["params"], state["stats"] = update(state["params"], state["stats"], x, y)
        return float(loss)
    return step


# ---- 10a: the DSL networks --------------------------------------------------------------------

def image_batch(batch: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, 3, size, size)).astype(np.float32),
            rng.integers(0, CLASSES, batch))


def dsl_network_rows(file: str, logits_of, batch: int, repeats: int) -> list:
    """(system, median seconds or None, first loss) for one DSL network's SGD step."""
    x, y = image_batch(batch, 32)
    steps = {}
    for backend in ("numpy", "onnxruntime"):
        model = chainrule.compile(os.path.join(MODELS, file))
        steps[f"chainrule-{backend}"] = chainrule_step(model, backend, x, y)
    torch, jax = optional("torch"), optional("jax")
    if torch is not None:
        steps.update(torch_steps(torch, lambda: torch_step(torch, logits_of, model.params), x, y))
    alone = {}
    if jax is not None:
        jitted = jax_step(jax, logits_of, model.params)
        alone["jax jit"] = lambda: jitted(x, y)
    missing = [(name, None, None) for name, module in (("pytorch eager", torch), ("jax jit", jax))
               if module is None]
    return timed_rows(steps, alone, repeats) + missing


def torch_steps(torch, make_step, x, y) -> dict:
    """A PyTorch step at its default threads, and another (of its own params) on one thread."""
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    threads = torch.get_num_threads()
    default, single = make_step(), make_step()

    def one_thread():
        torch.set_num_threads(1)
        try:
            return single(tx, ty)
        finally:
            torch.set_num_threads(threads)
    return {"pytorch eager": lambda: default(tx, ty), "pytorch eager, 1 thread": one_thread}


def chainrule_step(model, backend: str, x, y):
    """The model's -O2 SGD step through `Trainer.train_step`; returns the loss."""
    config = TrainConfig(optimizer=OptimizerSpec("sgd"), lr=LR_VALUE, backend=backend,
                         opt_level="O2")
    trainer = Trainer(model, config)
    batch = {"x": x, "y": y}
    return lambda: float(trainer.train_step(batch, LR_VALUE)[model.objective.name])


def timed_rows(steps: dict, alone: dict, repeats: int) -> list:
    """(system, median seconds, loss of its first step) for each system: all start from the
    same params and batch. The `steps` are timed in turn, call by call; those `alone` each on
    its own afterwards (JAX's thread pool stays busy for a while after a call, and a
    two-thread PyTorch call that follows one runs many times slower)."""
    first_losses = {name: step() for name, step in {**steps, **alone}.items()}  # and warm up
    medians = interleaved_medians(steps, repeats, warmup=0)
    for name, step in alone.items():
        medians.update(interleaved_medians({name: step}, repeats, warmup=0))
    return [(name, medians[name], first_losses[name]) for name in first_losses]


def print_rows(title: str, rows: list) -> None:
    """A table with each system's ratio to PyTorch eager at its default threads and on one:
    on a loaded machine the default's two threads may wait for each other many times over."""
    seconds_of = {name: seconds for name, seconds, _ in rows}
    references = [seconds_of.get(name) for name in ("pytorch eager", "pytorch eager, 1 thread")]
    print(f"\n### {title}\n")
    print(f"{os.cpu_count()} cores; {thread_settings()}; PyTorch and JAX at their own default "
          f"threads.\n")
    print("| system | median (ms) | vs pytorch eager | vs pytorch eager, 1 thread | "
          "loss of the first step |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, loss in rows:
        if seconds is None:
            print(f"| {name} | not installed | | | |")
            continue
        ratios = " | ".join(f"{seconds / reference:.2f}×" if reference else ""
                            for reference in references)
        print(f"| {name} | {seconds * 1e3:,.1f} | {ratios} | {loss:.6f} |")


# ---- 10b: torchvision's models through ONNX ---------------------------------------------------

def torchvision_models(torch):
    """torchvision.models, or None when torchvision is not installed.

    The registry's torchvision wheel is built against its CUDA torch and fails registering its
    compiled ops beside a CPU torch; the model builders are plain Python, so on that failure
    they are imported again with the registrations of compiled ops skipped."""
    try:
        import torchvision.models
        return torchvision.models
    except ImportError:
        return None
    except RuntimeError:
        for name in [name for name in sys.modules if name.startswith("torchvision")]:
            del sys.modules[name]
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda function: function)
    try:
        import torchvision.models
    finally:
        torch.library.register_fake = register_fake
    return torchvision.models


def torchvision_module(torch, models, name: str):
    """A freshly initialised torchvision model, the same on every call (seeded)."""
    torch.manual_seed(0)
    if name == "resnet18":
        return models.resnet18(num_classes=CLASSES)
    return models.mobilenet_v2(num_classes=CLASSES, dropout=0.0)


def exported(torch, models, name: str, batch: int, size: int) -> str:
    """The ONNX file of a torchvision model at this input shape, exported once into the
    cache (TorchScript exporter, opset 17, batch norm kept: the model is exported in
    inference mode, which leaves its nodes as they are)."""
    path = os.path.join(CACHE, f"{name}_b{batch}_{size}.onnx")
    if os.path.exists(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".gitignore"), "w") as file:
        file.write("*\n")
    module = torchvision_module(torch, models, name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(module, (torch.zeros(batch, 3, size, size),), path, dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["logits"],
                          training=torch.onnx.TrainingMode.PRESERVE)
    return path


def torch_module_step(torch, module):
    """PyTorch eager's SGD step on a module in training mode; returns the loss."""
    module.train()
    return torch_sgd_step(torch, module, [p for p in module.parameters() if p.requires_grad])


def imported_rows(name: str, batch: int, size: int, repeats: int) -> tuple[list, str]:
    """The rows of one torchvision model, and a note on its params, or (None, why)."""
    torch = optional("torch")
    models = torchvision_models(torch) if torch is not None else None
    if models is None:
        return None, "torch or torchvision is not installed"
    path = exported(torch, models, name, batch, size)
    x, y = image_batch(batch, size)
    steps = {}
    for backend in ("numpy", "onnxruntime"):
        model = chainrule.import_onnx(path, loss="cross_entropy")
        steps[f"chainrule-{backend}"] = chainrule_step(model, backend, x, y)
    steps.update(torch_steps(
        torch, lambda: torch_module_step(torch, torchvision_module(torch, models, name)), x, y))
    trained = sum(1 for p in torchvision_module(torch, models, name).parameters()
                  if p.requires_grad)
    note = (f"{len(model.params)} params and statistics imported; the module trains "
            f"{trained} tensors")
    return timed_rows(steps, {}, repeats), note




# ---- workload 10 ------------------------------------------------------------------------------

def print_cnn_tables(quick: bool) -> None:
    repeats = 5 if quick else 20
    batch = 8
    for title, file, logits_of in DSL_NETWORKS:
        print_rows(f"10a. {title} train step (bench/models/{file}, batch {batch}, 3x32x32, "
                   f"SGD)", dsl_network_rows(file, logits_of, batch, repeats))
    for name, title in (("resnet18", "ResNet-18"), ("mobilenet_v2", "MobileNet-v2")):
        rows, note = imported_rows(name, 8, 64, max(repeats // 2, 3))
        heading = (f"10b. torchvision's {title} imported from ONNX: gradient step "
                   f"(batch 8, 3x64x64, SGD)")
        if rows is None:
            print(f"\n### {heading}\n\n({note})")
            continue
        print_rows(heading, rows)
        print(f"\n{note}.")
