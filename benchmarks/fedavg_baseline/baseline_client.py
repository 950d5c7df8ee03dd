"""What a user would write without MedPFL: a plain NVFlare Client API loop (no Lightning) over the same data.

Same network, data loading, optimizer, learning rate, local epochs and exchange (DIFF) as the MedPFL site entry.
"""

import argparse
import os

import nvflare.client as flare
import torch
from baseline_net import BaselineNet

from medpfl_app.data import DataConfig, build_dataloaders, load_site_data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--local_epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    torch.manual_seed(args.seed)
    site_data = load_site_data(os.path.join(os.environ["MEDPFL_DATA_ROOT"], site, "datalist.json"), site=site)
    train_loader, val_loader = build_dataloaders(site_data, DataConfig(), site=site)
    net = BaselineNet()
    loss_fn = torch.nn.CrossEntropyLoss()
    while flare.is_running():
        global_model = flare.receive()
        net.load_state_dict(global_model.params)
        net.eval()
        correct = 0
        with torch.no_grad():
            for batch in val_loader:
                correct += int((net(batch["image"]).argmax(1) == batch["label"]).sum())
        accuracy = correct / len(site_data.validation)
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
        steps = 0
        for _ in range(args.local_epochs):
            for batch in train_loader:
                optimizer.zero_grad()
                loss_fn(net(batch["image"]), batch["label"]).backward()
                optimizer.step()
                steps += 1
        flare.send(
            flare.FLModel(
                params=net.cpu().state_dict(),
                metrics={"accuracy": accuracy},
                meta={"NUM_STEPS_CURRENT_ROUND": steps},
            )
        )


if __name__ == "__main__":
    main()
