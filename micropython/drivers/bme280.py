"""Bosch BME280 temperature, pressure and humidity sensor over I2C (MicroPython and CPython).

The compensation is the integer arithmetic of the BME280 datasheet (section 4.2.3): temperature in
0.01 degC, pressure in Pa as Q24.8 (64-bit path), relative humidity in %RH as Q22.10. C's truncating
signed division is reproduced where the datasheet divides.

The bus is injected: any object with ``readfrom_mem(addr, reg, n)`` and ``writeto_mem(addr, reg, buf)``
(``machine.I2C`` on a board, a register map in tests). Measurements use forced mode: one conversion
per ``read_raw()``, then the sensor sleeps.
"""

import time

CHIP_ID = 0x60
REG_CALIB_A = 0x88  # 26 bytes: dig_T1..dig_P9, (0xA0 unused), dig_H1
REG_CHIP_ID = 0xD0
REG_CALIB_B = 0xE1  # 7 bytes: dig_H2..dig_H6
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7  # 8 bytes: press[3], temp[3], hum[2]

MODE_FORCED = 1
STATUS_MEASURING = 0x08

HUMIDITY_MAX_Q22_10 = 419430400


def _u16(b, i):
    return b[i] | (b[i + 1] << 8)


def _s16(b, i):
    v = _u16(b, i)
    return v - 0x10000 if v & 0x8000 else v


def _s8(v):
    return v - 0x100 if v & 0x80 else v


def _s12(v):
    return v - 0x1000 if v & 0x800 else v


def _div(a, b):
    """C99 signed division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def parse_calibration(block_a, block_b):
    """Calibration dict from registers 0x88..0xA1 (26 bytes) and 0xE1..0xE7 (7 bytes)."""
    if len(block_a) < 26 or len(block_b) < 7:
        raise ValueError("short calibration block")
    c = {"T1": _u16(block_a, 0), "T2": _s16(block_a, 2), "T3": _s16(block_a, 4), "P1": _u16(block_a, 6)}
    for n in range(2, 10):
        c["P%d" % n] = _s16(block_a, 8 + 2 * (n - 2))
    c["H1"] = block_a[25]
    c["H2"] = _s16(block_b, 0)
    c["H3"] = block_b[2]
    c["H4"] = _s12((block_b[3] << 4) | (block_b[4] & 0x0F))
    c["H5"] = _s12((block_b[5] << 4) | (block_b[4] >> 4))
    c["H6"] = _s8(block_b[6])
    return c


def compensate_temperature(adc_t, c):
    """(temperature in 0.01 degC, t_fine) from the 20-bit raw temperature."""
    var1 = (((adc_t >> 3) - (c["T1"] << 1)) * c["T2"]) >> 11
    d = (adc_t >> 4) - c["T1"]
    var2 = (((d * d) >> 12) * c["T3"]) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_pressure(adc_p, t_fine, c):
    """Pressure in Pa as Q24.8 (divide by 256) from the 20-bit raw pressure; 0 if P1 is 0."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * c["P6"]
    var2 = var2 + ((var1 * c["P5"]) << 17)
    var2 = var2 + (c["P4"] << 35)
    var1 = ((var1 * var1 * c["P3"]) >> 8) + ((var1 * c["P2"]) << 12)
    var1 = (((1 << 47) + var1) * c["P1"]) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _div(((p << 31) - var2) * 3125, var1)
    var1 = (c["P9"] * (p >> 13) * (p >> 13)) >> 25
    var2 = (c["P8"] * p) >> 19
    return ((p + var1 + var2) >> 8) + (c["P7"] << 4)


def compensate_humidity(adc_h, t_fine, c):
    """Relative humidity in %RH as Q22.10 (divide by 1024) from the 16-bit raw humidity."""
    v = t_fine - 76800
    a = ((adc_h << 14) - (c["H4"] << 20) - (c["H5"] * v) + 16384) >> 15
    b = (((((v * c["H6"]) >> 10) * (((v * c["H3"]) >> 11) + 32768)) >> 10) + 2097152) * c["H2"] + 8192
    v = a * (b >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c["H1"]) >> 4)
    if v < 0:
        v = 0
    if v > HUMIDITY_MAX_Q22_10:
        v = HUMIDITY_MAX_Q22_10
    return v >> 12


def _sleep_ms(ms):
    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


class BME280:
    """One sensor on an I2C bus. Oversampling settings are 0 (skip) .. 5 (x16) per datasheet 5.4."""

    def __init__(self, i2c, address=0x76, osrs_t=1, osrs_p=1, osrs_h=1, iir_filter=0, sleep_ms=None):
        self.i2c = i2c
        self.address = address
        self.osrs_t = osrs_t
        self.osrs_p = osrs_p
        self.osrs_h = osrs_h
        self._sleep_ms = sleep_ms or _sleep_ms
        chip = self._read(REG_CHIP_ID, 1)[0]
        if chip != CHIP_ID:
            raise OSError("no BME280 at 0x%02x (chip id 0x%02x)" % (address, chip))
        self.calibration = parse_calibration(self._read(REG_CALIB_A, 26), self._read(REG_CALIB_B, 7))
        self._write(REG_CONFIG, (iir_filter & 0x07) << 2)

    def _read(self, reg, n):
        return self.i2c.readfrom_mem(self.address, reg, n)

    def _write(self, reg, value):
        self.i2c.writeto_mem(self.address, reg, bytes([value]))

    def read_raw(self, timeout_ms=200):
        """One forced-mode conversion: (adc_T, adc_P, adc_H). OSError if the sensor stays busy."""
        self._write(REG_CTRL_HUM, self.osrs_h & 0x07)
        self._write(REG_CTRL_MEAS, ((self.osrs_t & 0x07) << 5) | ((self.osrs_p & 0x07) << 2) | MODE_FORCED)
        waited = 0
        while self._read(REG_STATUS, 1)[0] & STATUS_MEASURING:
            if waited >= timeout_ms:
                raise OSError("BME280 conversion timed out")
            self._sleep_ms(2)
            waited += 2
        d = self._read(REG_DATA, 8)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        return adc_t, adc_p, adc_h

    def read_compensated(self):
        """(temperature 0.01 degC, pressure Pa Q24.8, humidity %RH Q22.10) as ints."""
        adc_t, adc_p, adc_h = self.read_raw()
        t, t_fine = compensate_temperature(adc_t, self.calibration)
        return t, compensate_pressure(adc_p, t_fine, self.calibration), \
            compensate_humidity(adc_h, t_fine, self.calibration)

    def read(self):
        """(temperature degC, pressure Pa, relative humidity %) as floats."""
        t, p, h = self.read_compensated()
        return t / 100, p / 256, h / 1024

    def measurements(self):
        """A dict for DeviceClient.publish: integer units, no floats on the wire."""
        t, p, h = self.read_compensated()
        return {"t_cC": t, "p_Pa": p >> 8, "rh_mpct": (h * 1000) >> 10}
