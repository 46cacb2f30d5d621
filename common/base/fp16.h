// IEEE half and bfloat16 <-> float conversions (portable, exact).
#ifndef FLASHD_COMMON_BASE_FP16_H_
#define FLASHD_COMMON_BASE_FP16_H_

#include <cstdint>
#include <cstring>

namespace flashd {

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t FloatToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Half -> float, exact for every input including subnormals, inf and NaN.
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return BitsToFloat(sign);
    // Subnormal: value = mant * 2^-24.
    float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return BitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

// Float -> half, round to nearest even (what F16C's vcvtps2ph does).
inline uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatToBits(f);
  const uint32_t sign = (x >> 16) & 0x8000;
  uint32_t abs = x & 0x7fffffff;
  if (abs >= 0x7f800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00);  // overflow
  if (abs < 0x38800000u) {  // subnormal or zero in half
    // Round abs/2^-24 to nearest even integer.
    float v = BitsToFloat(abs) * 16777216.0f;
    uint32_t m = static_cast<uint32_t>(v);
    float frac = v - static_cast<float>(m);
    if (frac > 0.5f || (frac == 0.5f && (m & 1))) ++m;
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t r = abs + 0xfff + ((abs >> 13) & 1);  // round to nearest even
  r -= 0x38000000u;
  return static_cast<uint16_t>(sign | (r >> 13));
}

inline float Bf16ToFloat(uint16_t b) {
  return BitsToFloat(static_cast<uint32_t>(b) << 16);
}

// Float -> bfloat16, round to nearest even; NaN stays NaN.
inline uint16_t FloatToBf16(float f) {
  uint32_t u = FloatToBits(f);
  if ((u & 0x7fffffff) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 64);
  return static_cast<uint16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

}  // namespace flashd

#endif  // FLASHD_COMMON_BASE_FP16_H_
