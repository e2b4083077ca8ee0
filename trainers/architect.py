"""The architecture step of the bilevel search (spec section 8): first order and DARTS's unrolled step.

Both work for any supernet exposing ``arch_parameters()`` and ``weight_parameters()`` (the cell search
network and the HyperCuboid), and for every named space and weighting.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .config import ArchOptimConfig, OptimConfig
from .precision import Precision, autocast_of

__all__ = ["Architect", "unrolled_arch_gradients"]


class Architect:
    """Updates the architecture weights with Adam on validation batches.

    Args:
        model: the supernet.
        config: Adam settings and the order (1: plain gradient of the validation loss; 2: unrolled).
        weight_optim: the weight optimizer's settings (the unrolled step imitates one SGD step).
        precision: the forward passes run under its autocast, the losses in fp32 (None: fp32).
        scaler: fp16's loss scaler (shared with the weight step, which alone updates its scale); a step
            whose scaled gradients overflow is skipped, as the weight step's would be.
    """

    def __init__(self, model: nn.Module, config: ArchOptimConfig, weight_optim: OptimConfig,
                 precision: Precision | None = None, scaler: torch.amp.GradScaler | None = None) -> None:  # fmt: skip
        if scaler is not None and config.order == 2:
            raise ValueError("precision: fp16 (a loss scaler) is not supported with arch.order 2; use bf16 or fp32")
        self.model = model
        self.config = config
        self.weight_optim = weight_optim
        self.precision = precision
        self.scaler = scaler
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(
            model.arch_parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )

    def step(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
        *,
        lr: float,
        weight_optimizer: torch.optim.Optimizer,
    ) -> float:
        """One Adam step on the architecture weights; returns the validation loss."""
        arch = self.model.arch_parameters()
        if self.config.order == 1:
            with autocast_of(self.precision):
                logits = self.model(x_val)
            loss = self.criterion(logits.float(), y_val)
            # Gradients for the architecture only: the conv weight-gradient kernels are skipped.
            if self.scaler is None:
                grads = torch.autograd.grad(loss, arch)
            else:
                scale = self.scaler.get_scale()
                grads = [g / scale for g in torch.autograd.grad(loss * scale, arch)]
                if not all(bool(torch.isfinite(g).all()) for g in grads):
                    return float(loss.detach())  # overflowed: skip this step
        else:
            loss, grads = unrolled_arch_gradients(
                self.model, x_train, y_train, x_val, y_val,
                lr=lr, momentum=self.weight_optim.momentum, weight_decay=self.weight_optim.weight_decay,
                momentum_buffers=_momentum_buffers(weight_optimizer, self.model.weight_parameters()),
                precision=self.precision,
            )  # fmt: skip
        for p, g in zip(arch, grads):
            p.grad = g.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def _momentum_buffers(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> list[torch.Tensor | None]:
    return [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]


def unrolled_arch_gradients(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    momentum_buffers: list[torch.Tensor | None] | None = None,
    r: float = 0.01,
    precision: Precision | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """DARTS's second-order architecture gradient (Liu et al., eq. 7-8).

    ``w' = w - lr * (momentum * buf + dL_train/dw + weight_decay * w)`` is one virtual SGD step; the
    gradient is ``dL_val(w', a)/da - lr * H v`` with ``v = dL_val(w', a)/dw'`` and the Hessian-vector
    product ``H v = d^2 L_train / da dw . v`` approximated by central finite differences at
    ``w +- R v``, ``R = r / ||v||``. The model's own weights and BN statistics are left untouched
    (forward passes run through :func:`torch.func.functional_call` on cloned buffers). Under a reduced
    ``precision`` the four forward passes run under its autocast; the losses, the virtual step, the finite
    difference and every gradient stay fp32.

    Returns:
        the validation loss at ``w'`` and the gradient for each architecture parameter.
    """
    criterion = nn.CrossEntropyLoss()
    arch = model.arch_parameters()
    arch_ids = {id(p) for p in arch}
    named = [(n, p) for n, p in model.named_parameters() if id(p) not in arch_ids]
    arch_named = [(n, p) for n, p in model.named_parameters() if id(p) in arch_ids]
    names = [n for n, _ in named]
    weights = [p for _, p in named]

    def loss_at(weight_values: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, weight_values))
        params.update(dict(arch_named))
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        with autocast_of(precision):
            logits = functional_call(model, (params, buffers), (x,))
        return criterion(logits.float(), y)

    # One virtual SGD step on the training batch.
    train_grads = torch.autograd.grad(loss_at(weights, x_train, y_train), weights, allow_unused=True)
    buffers = momentum_buffers or [None] * len(weights)
    unrolled = []
    for w, g, buf in zip(weights, train_grads, buffers):
        d = (g if g is not None else torch.zeros_like(w)) + weight_decay * w
        if buf is not None:
            d = d + momentum * buf
        unrolled.append((w - lr * d).detach().requires_grad_(True))

    val_loss = loss_at(unrolled, x_val, y_val)
    grads = torch.autograd.grad(val_loss, arch + unrolled, allow_unused=True)
    d_arch = [g if g is not None else torch.zeros_like(a) for g, a in zip(grads[: len(arch)], arch)]
    v = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads[len(arch) :], unrolled)]

    # Finite-difference Hessian-vector product.
    norm = torch.sqrt(sum((t.detach() ** 2).sum() for t in v))
    R = r / max(float(norm), 1e-12)
    with torch.no_grad():
        w_plus = [w + R * t for w, t in zip(weights, v)]
        w_minus = [w - R * t for w, t in zip(weights, v)]
    g_plus = torch.autograd.grad(loss_at(w_plus, x_train, y_train), arch, allow_unused=True)
    g_minus = torch.autograd.grad(loss_at(w_minus, x_train, y_train), arch, allow_unused=True)
    out = []
    for da, gp, gm, a in zip(d_arch, g_plus, g_minus, arch):
        gp = gp if gp is not None else torch.zeros_like(a)
        gm = gm if gm is not None else torch.zeros_like(a)
        out.append(da - lr * (gp - gm) / (2 * R))
    return val_loss, out
