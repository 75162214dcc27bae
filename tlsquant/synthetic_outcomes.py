"""A seeded synthetic patient cohort with TLS metrics, RECIST response and PFS, for the demo and tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_outcome_cohort(n_patients: int = 60, *, seed: int = 0) -> pd.DataFrame:
    """Patients whose response and progression-free survival depend on their TLS density.

    About a third have no TLS (density 0). The chance of response (CR/PR) rises with the
    log density; PFS (months) is exponential with a hazard halved above a density of
    0.05 / mm², censored uniformly between 6 and 36 months.

    Returns
    -------
    DataFrame with ``patient_id``, ``tls_density_per_mm2``, ``tls_area_pct``,
    ``tls_mature_count``, ``response`` (CR, PR, SD, PD, NE), ``pfs_months``, ``pfs_event``.
    """
    rng = np.random.default_rng(seed)
    has_tls = rng.random(n_patients) > 0.33
    density = np.where(has_tls, np.round(rng.lognormal(np.log(0.05), 1.0, n_patients), 4), 0.0)
    area_pct = np.round(density * rng.uniform(3, 6, n_patients), 4)
    mature = np.where(has_tls, rng.poisson(1 + 20 * density), 0)
    chance = 1 / (1 + np.exp(-(np.log(density + 0.005) + 3.0)))  # ~0.1 without TLS, ~0.5 at 0.05 / mm²
    draw = rng.random(n_patients)
    response = np.where(draw < chance * 0.2, "CR", np.where(draw < chance, "PR", np.where(
        draw < chance + 0.35 * (1 - chance), "SD", "PD")))
    response[rng.random(n_patients) < 0.04] = "NE"
    hazard = np.where(density > 0.05, 1 / 14.0, 1 / 6.0)
    pfs = rng.exponential(1 / hazard)
    censor = rng.uniform(6, 36, n_patients)
    return pd.DataFrame({
        "patient_id": [f"P{i + 1:03d}" for i in range(n_patients)], "tls_density_per_mm2": density,
        "tls_area_pct": area_pct, "tls_mature_count": mature, "response": response,
        "pfs_months": np.round(np.minimum(pfs, censor), 1), "pfs_event": (pfs <= censor).astype(int),
    })
