"""The straightforward Inverting-Gradients loop the engine is benchmarked and tested against.

Restarts run one after another on the ``nn.Module`` itself, with ``torch.autograd.grad(create_graph=True)`` every
iteration, as the original papers' code does. Same recipe as `medpfl_app.attacks.engine` (cosine matching,
signed Adam, step decay, TV, box), gradient updates only. Kept deliberately simple: it is the yardstick.
"""

from __future__ import annotations

import copy
import math
from typing import cast

import torch
import torch.nn.functional as F

from medpfl_app.attacks.engine import MatchingConfig, total_variation
from medpfl_app.attacks.knowledge import AttackerKnowledge, UpdateKind
from medpfl_app.errors import MedPFLError


def reference_gradinv(
    knowledge: AttackerKnowledge, config: MatchingConfig, initial: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``config.restarts`` restarts sequentially from ``initial`` ``(R, N, C, H, W)``.

    Returns:
        The best restart's images ``(N, C, H, W)`` and each restart's best matching loss ``(R,)``.
    """
    if knowledge.kind is not UpdateKind.GRADIENT:
        raise MedPFLError("the reference loop handles gradient updates only", fix="benchmark on a gradient update")
    model = copy.deepcopy(knowledge.model).float()
    model.load_state_dict({k: v for k, v in knowledge.weights.items() if k in model.state_dict()}, strict=False)
    model.eval()
    if knowledge.bn_train_mode:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.train()
    names = [n for n, _ in model.named_parameters() if n in knowledge.update]
    params = [p for n, p in model.named_parameters() if n in knowledge.update]
    target = [knowledge.update[n].float() for n in names]
    target_norm = math.sqrt(sum(float(t.pow(2).sum()) for t in target))
    best_losses = torch.full((config.restarts,), math.inf)
    best_images = initial.detach().clone()
    for r in range(config.restarts):
        x = initial[r].detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=config.lr)
        milestones = [int(config.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        for _ in range(config.iterations):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), labels)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            # sum() starts at 0, so its static type includes int; the model has parameters, so these are tensors.
            dot = cast(torch.Tensor, sum((g * t).sum() for g, t in zip(grads, target)))
            norm = torch.sqrt(cast(torch.Tensor, sum(g.pow(2).sum() for g in grads)))
            match = 1 - dot / (norm * target_norm + 1e-12)
            if float(match.detach()) < float(best_losses[r]):
                best_losses[r] = float(match.detach())
                best_images[r] = x.detach()
            (match + config.tv * total_variation(x)).backward()
            assert x.grad is not None  # x requires grad and took part in the loss, so backward() filled it
            x.grad.sign_()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        with torch.no_grad():
            x_final = x.detach().clone()
        x_final.requires_grad_(True)
        loss = F.cross_entropy(model(x_final), labels)
        final_grads = torch.autograd.grad(loss, params)
        final_dot = sum(float((g * t).sum()) for g, t in zip(final_grads, target))
        final_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in final_grads))
        final = 1 - final_dot / (final_norm * target_norm + 1e-12)
        if final < float(best_losses[r]):
            best_losses[r] = final
            best_images[r] = x_final.detach()
    best = int(best_losses.argmin())
    return best_images[best].clamp(0, 1), best_losses
