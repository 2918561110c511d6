"""Write the fixed small datasets of tests/reference/ (run once; the CSVs are committed).

    .venv/bin/python tests/reference/make_data.py

The R script ``reference.R`` computes the reference values from these files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent


def main() -> None:
    rng = np.random.default_rng(2026)
    rows = []
    groups = ["A", "B", "C"]
    for i in range(12):
        subject = f"R{i + 1:02d}"
        group = groups[i // 4]
        sex = "F" if i % 2 == 0 else "M"
        rat = rng.normal(0.0, 6.0)
        for day in range(1, 6):
            mu = 18 + 4 * groups.index(group) + (2.0 + 1.0 * groups.index(group)) * day + rat
            mu += 3.0 if sex == "M" else 0.0
            active = int(rng.poisson(max(mu, 1.0)))
            inactive = int(rng.poisson(4.0 + 0.3 * day))
            rows.append((subject, group, sex, day, active, inactive))
    bal = pd.DataFrame(
        rows, columns=["subject", "group", "sex", "day_in_phase", "active", "inactive"]
    )
    bal.to_csv(HERE / "lmm_balanced.csv", index=False)
    drop = {("R02", 3), ("R07", 5), ("R11", 2), ("R11", 4)}
    keep = [(s, d) not in drop for s, d in zip(bal["subject"], bal["day_in_phase"], strict=True)]
    bal[keep].to_csv(HERE / "lmm_unbalanced.csv", index=False)

    rows = []
    for i in range(12):
        subject = f"S{i + 1:02d}"
        group = groups[i // 4]
        sex = "F" if i % 2 == 0 else "M"
        base = rng.poisson(8.0, size=2).mean()
        test = int(rng.poisson(10.0 + 6.0 * groups.index(group) + rng.normal(0, 3) ** 2))
        base_in = rng.poisson(3.0, size=2).mean()
        test_in = int(rng.poisson(4.0))
        rows.append((subject, group, sex, base, test, base_in, test_in))
    rein = pd.DataFrame(
        rows,
        columns=[
            "subject",
            "group",
            "sex",
            "baseline_active",
            "test_active",
            "baseline_inactive",
            "test_inactive",
        ],
    )
    rein.to_csv(HERE / "reinstatement.csv", index=False)


if __name__ == "__main__":
    main()
