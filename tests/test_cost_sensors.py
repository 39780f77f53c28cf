"""Energy sensors: tegrastats parsing, RAPL counters (with wrap-around) on a fake powercap tree, and None
when a sensor is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sparkv.executor import sensors
from sparkv.executor.sensors import EnergySensor, parse_tegrastats_line, rapl_sensor, total_power_w

ORIN = (
    "11-23-2026 10:00:00 RAM 2448/30536MB (lfb 7x4MB) CPU [2%@729,1%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] "
    "VDD_GPU_SOC 2386mW/2386mW VDD_CPU_CV 397mW/397mW VIN_SYS_5V0 2822mW/2822mW VDDQ_VDD2_1V8AO 503mW/503mW"
)
ORIN_NANO = "RAM 1234/7620MB CPU [1%@1510] VDD_IN 4936mW/4936mW VDD_CPU_GPU_CV 1218mW/1218mW VDD_SOC 1421mW/1421mW"
NANO_JP4 = "RAM 1000/3964MB CPU [5%@102] POM_5V_IN 2862/2862 POM_5V_GPU 0/0 POM_5V_CPU 410/410"


def test_tegrastats_lines() -> None:
    rails = parse_tegrastats_line(ORIN_NANO)
    assert rails == {"VDD_IN": 4.936, "VDD_CPU_GPU_CV": 1.218, "VDD_SOC": 1.421}
    assert total_power_w(rails) == 4.936
    assert total_power_w(parse_tegrastats_line(NANO_JP4)) == 2.862
    assert total_power_w(parse_tegrastats_line(ORIN)) == 2.822  # AGX Orin: VIN_SYS_5V0 is the input rail
    assert total_power_w({}) is None


def _zone(root: Path, name: str, energy: int, top: int = 1000) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text("package-0\n")
    (z / "energy_uj").write_text(f"{energy}\n")
    (z / "max_energy_range_uj").write_text(f"{top}\n")
    return z


def test_rapl_counts_and_wraps(tmp_path: Path) -> None:
    zone = _zone(tmp_path, "intel-rapl:0", 900)
    _zone(tmp_path, "intel-rapl:0:0", 5)  # a sub-zone: not summed
    sensor = rapl_sensor(tmp_path)
    assert sensor is not None and isinstance(sensor, EnergySensor)
    assert sensor.energy_j() == 0.0
    (zone / "energy_uj").write_text("950\n")
    assert sensor.energy_j() == pytest.approx(50e-6)
    (zone / "energy_uj").write_text("50\n")  # wrapped at 1000
    assert sensor.energy_j() == pytest.approx(150e-6)
    assert rapl_sensor(tmp_path / "absent") is None


def test_absent_sensors_are_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert sensors.nvml_sensor() is None
    monkeypatch.setattr(sensors, "RAPL_ROOT", Path("/nonexistent"))
    monkeypatch.setattr(sensors.shutil, "which", lambda _: None)
    assert sensors.open_sensor("cpu") is None
    assert sensors.open_sensor("cuda:0") is None
    out, joules, wall = sensors.measure_energy(None, lambda: 42)
    assert out == 42 and joules is None and wall >= 0
