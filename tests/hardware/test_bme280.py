"""BME280 driver: datasheet integer compensation against the datasheet's floating-point formulas."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.tools.micropython_vm import run_wasm

DRIVER = Path(__file__).resolve().parents[2] / "micropython" / "drivers" / "bme280.py"
_spec = importlib.util.spec_from_file_location("bme280_under_test", DRIVER)
bme280 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bme280)

# Calibration of the datasheet's worked example (T and P), humidity words of a production part.
CALIB = {"T1": 27504, "T2": 26435, "T3": -1000, "P1": 36477, "P2": -10685, "P3": 3024, "P4": 2855,
         "P5": 140, "P6": -7, "P7": 15500, "P8": -14600, "P9": 6000,
         "H1": 75, "H2": 362, "H3": 0, "H4": 313, "H5": 50, "H6": 30}
ADC_T, ADC_P, ADC_H = 519888, 415148, 30000


def float_temperature(adc_t, c):
    var1 = (adc_t / 16384.0 - c["T1"] / 1024.0) * c["T2"]
    var2 = (adc_t / 131072.0 - c["T1"] / 8192.0) ** 2 * c["T3"]
    return (var1 + var2) / 5120.0, int(var1 + var2)


def float_pressure(adc_p, t_fine, c):
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * c["P6"] / 32768.0
    var2 = var2 + var1 * c["P5"] * 2.0
    var2 = var2 / 4.0 + c["P4"] * 65536.0
    var1 = (c["P3"] * var1 * var1 / 524288.0 + c["P2"] * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * c["P1"]
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = c["P9"] * p * p / 2147483648.0
    var2 = p * c["P8"] / 32768.0
    return p + (var1 + var2 + c["P7"]) / 16.0


def float_humidity(adc_h, t_fine, c):
    h = t_fine - 76800.0
    h = (adc_h - (c["H4"] * 64.0 + c["H5"] / 16384.0 * h)) * (
        c["H2"] / 65536.0 * (1.0 + c["H6"] / 67108864.0 * h * (1.0 + c["H3"] / 67108864.0 * h)))
    h = h * (1.0 - c["H1"] * h / 524288.0)
    return min(100.0, max(0.0, h))


def register_map(c, adc_t, adc_p, adc_h):
    """A 256-byte register file laid out as datasheet table 18 (calibration, id, data)."""
    regs = bytearray(256)

    def put16(addr, v):
        v &= 0xFFFF
        regs[addr], regs[addr + 1] = v & 0xFF, v >> 8

    for i, name in enumerate(["T1", "T2", "T3", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9"]):
        put16(0x88 + 2 * i, c[name])
    regs[0xA1] = c["H1"]
    put16(0xE1, c["H2"])
    regs[0xE3] = c["H3"]
    h4, h5 = c["H4"] & 0xFFF, c["H5"] & 0xFFF
    regs[0xE4], regs[0xE5], regs[0xE6] = h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4
    regs[0xE7] = c["H6"] & 0xFF
    regs[0xD0] = 0x60
    regs[0xF7:0xFF] = bytes([adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4,
                             adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4, adc_h >> 8, adc_h & 0xFF])
    return regs


class FakeI2C:
    """Register-map bus; the status register reports 'measuring' for ``busy_polls`` reads after a trigger."""

    def __init__(self, regs, address=0x76, busy_polls=2):
        self.regs, self.address, self.busy_polls = regs, address, busy_polls
        self.writes = []
        self._busy = 0

    def readfrom_mem(self, addr, reg, n):
        if addr != self.address:
            raise OSError(19)  # ENODEV, as machine.I2C reports a missing device
        if reg == 0xF3:
            busy = self._busy > 0
            self._busy -= 1
            return bytes([0x08 if busy else 0])
        return bytes(self.regs[reg:reg + n])

    def writeto_mem(self, addr, reg, buf):
        self.writes.append((reg, bytes(buf)))
        if reg == 0xF4 and buf[0] & 0x03 == 0x01:
            self._busy = self.busy_polls


def test_datasheet_worked_example_temperature_and_pressure():
    t, t_fine = bme280.compensate_temperature(ADC_T, CALIB)
    assert (t, t_fine) == (2508, 128422)  # 25.08 degC, the datasheet's example
    p = bme280.compensate_pressure(ADC_P, t_fine, CALIB)
    assert abs(p / 256 - 100653.27) < 0.5  # datasheet example: 100653.27 Pa (double path)
    assert abs(p / 256 - float_pressure(ADC_P, t_fine, CALIB)) < 0.5
    t_float, t_fine_float = float_temperature(ADC_T, CALIB)
    assert abs(t_float - 25.08) < 0.01 and abs(t_fine_float - t_fine) <= 1


def test_driver_reads_through_the_bus():
    bus = FakeI2C(register_map(CALIB, ADC_T, ADC_P, ADC_H))
    sensor = bme280.BME280(bus, sleep_ms=lambda ms: None)
    assert sensor.calibration == CALIB
    assert sensor.read_raw() == (ADC_T, ADC_P, ADC_H)
    temp, press, hum = sensor.read()
    _, t_fine = bme280.compensate_temperature(ADC_T, CALIB)
    assert temp == 25.08
    assert abs(hum - float_humidity(ADC_H, t_fine, CALIB)) < 0.01
    assert (0xF4, bytes([0x25])) in bus.writes  # osrs_t=1, osrs_p=1, forced mode
    m = sensor.measurements()
    assert m["t_cC"] == 2508 and m["p_Pa"] == int(press)


def test_wrong_chip_and_busy_sensor_raise_oserror():
    regs = register_map(CALIB, ADC_T, ADC_P, ADC_H)
    regs[0xD0] = 0x58  # a BMP280
    with pytest.raises(OSError, match="no BME280"):
        bme280.BME280(FakeI2C(regs), sleep_ms=lambda ms: None)
    with pytest.raises(OSError):
        bme280.BME280(FakeI2C(register_map(CALIB, ADC_T, ADC_P, ADC_H)), address=0x77)
    stuck = bme280.BME280(FakeI2C(register_map(CALIB, ADC_T, ADC_P, ADC_H), busy_polls=10 ** 6),
                          sleep_ms=lambda ms: None)
    with pytest.raises(OSError, match="timed out"):
        stuck.read_raw()


calib_strategy = st.fixed_dictionaries({
    "T1": st.integers(26000, 29000), "T2": st.integers(25000, 27500), "T3": st.integers(-1200, 0),
    "P1": st.integers(35000, 38000), "P2": st.integers(-11000, -10000), "P3": st.integers(2800, 3200),
    "P4": st.integers(2000, 8000), "P5": st.integers(-200, 200), "P6": st.integers(-10, 0),
    "P7": st.integers(9000, 16000), "P8": st.integers(-15000, -10000), "P9": st.integers(4000, 6500),
    "H1": st.integers(0, 255), "H2": st.integers(300, 420), "H3": st.integers(0, 255),
    "H4": st.integers(250, 400), "H5": st.integers(0, 100), "H6": st.integers(0, 127)})


@settings(max_examples=200, deadline=None)
@given(calib_strategy, st.integers(400000, 600000), st.integers(250000, 450000), st.integers(10000, 60000))
def test_integer_path_matches_float_formulas(c, adc_t, adc_p, adc_h):
    t, t_fine = bme280.compensate_temperature(adc_t, c)
    t_float, _ = float_temperature(adc_t, c)
    assert abs(t / 100 - t_float) <= 0.011
    p = bme280.compensate_pressure(adc_p, t_fine, c) / 256
    assert abs(p - float_pressure(adc_p, t_fine, c)) < 1.0
    h = bme280.compensate_humidity(adc_h, t_fine, c) / 1024
    assert abs(h - float_humidity(adc_h, t_fine, c)) < 0.05


@settings(max_examples=50, deadline=None)
@given(calib_strategy)
def test_calibration_registers_round_trip(c):
    regs = register_map(c, ADC_T, ADC_P, ADC_H)
    assert bme280.parse_calibration(regs[0x88:0xA2], regs[0xE1:0xE8]) == c


def test_driver_runs_in_micropython(tmp_path):
    subprocess.run(["mpy-cross", "-o", str(tmp_path / "bme280.mpy"), str(DRIVER)], check=True)
    regs = register_map(CALIB, ADC_T, ADC_P, ADC_H)
    code = (
        "import sys, json\nsys.path.insert(0, '/input')\nimport bme280\n"
        "R = bytes.fromhex(%r)\n"
        "class Bus:\n"
        "    def readfrom_mem(self, a, r, n):\n"
        "        return bytes([0]) if r == 0xF3 else R[r:r + n]\n"
        "    def writeto_mem(self, a, r, b):\n"
        "        pass\n"
        "s = bme280.BME280(Bus())\n"
        "print(json.dumps(list(s.read_compensated())))\n" % regs.hex())
    result = run_wasm(code, fuel=10 ** 9, heap_bytes=4 << 20, readonly_dir=tmp_path, timeout=60)
    t, t_fine = bme280.compensate_temperature(ADC_T, CALIB)
    expected = [t, bme280.compensate_pressure(ADC_P, t_fine, CALIB), bme280.compensate_humidity(ADC_H, t_fine, CALIB)]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
