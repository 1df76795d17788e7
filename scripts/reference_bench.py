"""The reference design of a GTN meta-step, written the straightforward PyTorch way, timed.

This is the baseline `gtn bench` is compared with (README, "Performance"): the reference
generator run once per inner step, a full curriculum, a fresh learner unrolled T steps with
`torch.autograd.grad(..., create_graph=True)`, weight normalisation recomputed at every use,
PyTorch's own upsample / reflection pad / max-pool / leaky ReLU, and one Adam step on the
generator, the curriculum and the learned log learning rates and momenta. Nothing is tuned for
speed or memory: it is what a PyTorch user would write from the paper. Run it through
`scripts/reference-bench.sh`, which installs the PyTorch it needs.

Prints one JSON object per configuration with the same keys `gtn bench --json` uses for time and
memory: `seconds_per_meta_step_median` (and min, max), `peak_rss_mib` (VmHWM over the timed
steps, after a warm-up step, as `gtn bench` measures it) and `baseline_rss_mib` (VmRSS before
the first meta-step: PyTorch and the data).
"""

import argparse
import gzip
import json
import pathlib
import statistics
import time

import torch
import torch.nn.functional as F

NOISE, CLASSES, SLOPE = 128, 10, 0.1


def wn(v, g):
    """Weight normalisation: g * v / ||v|| per output unit."""
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    return v * (g.view_as(norm) / norm)


def kaiming(shape):
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return torch.randn(shape) * (2.0 / fan_in) ** 0.5


def wn_params(shape, bias):
    v = kaiming(shape)
    params = [v, v.flatten(1).norm(dim=1)]
    if bias:
        params.append(torch.zeros(shape[0]))
    return params


class Generator(torch.nn.Module):
    """noise + one-hot label -> FC 1024 -> BN -> LReLU -> FC 128*7*7 -> BN -> LReLU ->
    [upsample x2, reflection pad, conv3x3 128->64] -> BN -> LReLU ->
    [upsample x2, reflection pad, conv3x3 64->1] -> tanh * 2; every layer weight-normalised."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.ParameterList(
            torch.nn.Parameter(t)
            for t in wn_params([1024, NOISE + CLASSES], False)
            + wn_params([128 * 7 * 7, 1024], False)
            + wn_params([64, 128, 3, 3], False)
            + wn_params([1, 64, 3, 3], True)
        )
        self.bn1 = torch.nn.BatchNorm1d(1024)
        self.bn2 = torch.nn.BatchNorm1d(128 * 7 * 7)
        self.bn3 = torch.nn.BatchNorm2d(64)

    def forward(self, z, labels):
        p = self.p
        x = torch.cat([z, F.one_hot(labels, CLASSES).float()], 1)
        x = F.leaky_relu(self.bn1(F.linear(x, wn(p[0], p[1]))), SLOPE)
        x = F.leaky_relu(self.bn2(F.linear(x, wn(p[2], p[3]))), SLOPE).view(-1, 128, 7, 7)
        x = F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1, 1, 1, 1), mode="reflect")
        x = F.leaky_relu(self.bn3(F.conv2d(x, wn(p[4], p[5]))), SLOPE)
        x = F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1, 1, 1, 1), mode="reflect")
        return torch.tanh(F.conv2d(x, wn(p[6], p[7]), p[8])) * 2.0


def mean_only_bn(x, bias):
    dims = [0, 2, 3] if x.dim() == 4 else [0]
    shape = [1, -1, 1, 1] if x.dim() == 4 else [1, -1]
    return x - x.mean(dims, keepdim=True) + bias.view(shape)


def base_fc_init():
    """conv 64 -> maxpool -> conv 128 -> maxpool -> FC 256 -> FC 10."""
    return (
        wn_params([64, 1, 3, 3], False) + [torch.zeros(64)]
        + wn_params([128, 64, 3, 3], False) + [torch.zeros(128)]
        + wn_params([256, 128 * 7 * 7], False) + [torch.zeros(256)]
        + wn_params([CLASSES, 256], True)
    )


def base_fc(p, x):
    act = lambda y, b: F.leaky_relu(mean_only_bn(y, b), SLOPE)
    x = act(F.max_pool2d(F.conv2d(x, wn(p[0], p[1]), padding=1), 3, 2, 1), p[2])
    x = act(F.max_pool2d(F.conv2d(x, wn(p[3], p[4]), padding=1), 3, 2, 1), p[5])
    x = act(F.linear(x.flatten(1), wn(p[6], p[7])), p[8])
    return F.linear(x, wn(p[9], p[10]), p[11])


def mlp_init():
    """784 -> 256 -> 128 -> 10."""
    return (
        wn_params([256, 784], False) + [torch.zeros(256)]
        + wn_params([128, 256], False) + [torch.zeros(128)]
        + wn_params([CLASSES, 128], True)
    )


def mlp(p, x):
    act = lambda y, b: F.leaky_relu(mean_only_bn(y, b), SLOPE)
    x = act(F.linear(x.flatten(1), wn(p[0], p[1])), p[2])
    x = act(F.linear(x, wn(p[3], p[4])), p[5])
    return F.linear(x, wn(p[6], p[7]), p[8])


LEARNERS = {"base-fc": (base_fc_init, base_fc), "mlp": (mlp_init, mlp)}


def mnist_train(data_dir):
    def read(name, offset):
        return gzip.open(pathlib.Path(data_dir) / name).read()[offset:]

    pixels = torch.frombuffer(bytearray(read("train-images-idx3-ubyte.gz", 16)), dtype=torch.uint8)
    labels = torch.frombuffer(bytearray(read("train-labels-idx1-ubyte.gz", 8)), dtype=torch.uint8)
    images = (pixels.view(-1, 1, 28, 28).float() / 255.0 - 0.1307) / 0.3081
    return images, labels.long()


def status_mib(key):
    """A memory figure of /proc/self/status (VmHWM: peak, VmRSS: now), in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learner", choices=sorted(LEARNERS), default="base-fc")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--meta-iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    ap.add_argument("--data-dir", default="data/mnist")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    init, forward = LEARNERS[args.learner]
    images, labels = mnist_train(args.data_dir)
    T, B = args.steps, args.batch

    generator = Generator()
    curriculum = torch.nn.Parameter(torch.randn(T, B, NOISE))
    log_lr = torch.nn.Parameter(torch.full([T], 0.02).log())
    log_mu = torch.nn.Parameter(torch.full([T], 0.5).log())
    adam = torch.optim.Adam([*generator.parameters(), curriculum, log_lr, log_mu], lr=0.02)
    step_labels = torch.arange(B) % CLASSES

    def meta_step():
        params = [t.requires_grad_() for t in init()]
        momentum = [torch.zeros_like(t) for t in params]
        for t in range(T):
            x = generator(curriculum[t], step_labels)
            loss = F.cross_entropy(forward(params, x), step_labels)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            lr, mu = log_lr[t].exp(), log_mu[t].exp()
            momentum = [mu * m + g for m, g in zip(momentum, grads)]
            params = [p - lr * m for p, m in zip(params, momentum)]
        real = torch.randint(0, len(images), [B])
        meta_loss = F.cross_entropy(forward(params, images[real]), labels[real])
        adam.zero_grad()
        meta_loss.backward()
        adam.step()

    baseline = status_mib("VmRSS:")
    meta_step()  # warm-up
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    times = []
    for _ in range(args.meta_iters):
        start = time.perf_counter()
        meta_step()
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "implementation": f"reference design, plain PyTorch {torch.__version__}",
        "learner": args.learner,
        "inner_steps": T,
        "batch_size": B,
        "threads": torch.get_num_threads(),
        "meta_iters": args.meta_iters,
        "seconds_per_meta_step_median": statistics.median(times),
        "seconds_per_meta_step_min": min(times),
        "seconds_per_meta_step_max": max(times),
        "peak_rss_mib": status_mib("VmHWM:"),
        "baseline_rss_mib": baseline,
    }))


if __name__ == "__main__":
    main()
