#include "rope.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

namespace ossrun {

namespace {

// θ of the released gpt-oss models, as OpenAI's reference computes it (MODEL.md §2.4). Its float32
// pow rounds two entries (i = 6, 10) the other way from a correctly rounded pow, so for these
// parameters we use the reference's bits rather than recompute them.
constexpr uint32_t kGptOssThetaBits[32] = {
    0x3F800000, 0x3F306535, 0x3EF316A2, 0x3EA77FAA, 0x3E66D3FA, 0x3E1F0CFD, 0x3DDB2F9F, 0x3D970764,
    0x3D502194, 0x3D01DDD5, 0x3C9E646F, 0x3C3DEC94, 0x3BDEA840, 0x3B7CFE14, 0x3B093803, 0x3A89F778,
    0x39EF543C, 0x390799B9, 0x3820ADC6, 0x37DD6DFC, 0x37989328, 0x375242FA, 0x3710E12C, 0x36C7A82B,
    0x3689928C, 0x363D9647, 0x3602A245, 0x35B40668, 0x35781728, 0x352AF200, 0x34EB93EB, 0x34A252D3};

bool is_gpt_oss_rope(const ModelConfig& c) {
    return c.key_length == 64 && c.rope_freq_base == 150000.0 && c.rope_scaling_factor == 32.0 &&
           c.rope_original_context == 4096.0 && c.yarn_beta_fast == 32.0 && c.yarn_beta_slow == 1.0;
}

}  // namespace

RopeTable make_rope_table(const ModelConfig& c) {
    const int64_t d = c.key_length, half = d / 2;
    RopeTable r;
    r.theta.resize(size_t(half));
    const double base = c.rope_freq_base, s = c.rope_scaling_factor, L0 = c.rope_original_context;
    // Each step rounds to float32 as the reference's float32 tensor ops do.
    std::vector<float> freq(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) {
        const float expo = float(2 * i) / float(d);
        freq[size_t(i)] = float(std::pow(double(float(base)), double(expo)));
    }
    if (s > 1.0) {
        r.concentration = float(0.1 * std::log(s) + 1.0);
        const double low = double(half) * std::log(L0 / (c.yarn_beta_fast * 2 * M_PI)) / std::log(base);
        const double high = double(half) * std::log(L0 / (c.yarn_beta_slow * 2 * M_PI)) / std::log(base);
        if (!(0 < low && low < high && high < double(half) - 1))
            throw std::invalid_argument("YaRN parameters give a degenerate correction range");
        const float lowf = float(low), span = float(high - low), sf = float(s);
        for (int64_t i = 0; i < half; ++i) {
            const float f = freq[size_t(i)];
            const float interpolation = 1.0f / (sf * f);
            const float extrapolation = 1.0f / f;
            float ramp = (float(i) - lowf) / span;
            ramp = ramp < 0.0f ? 0.0f : (ramp > 1.0f ? 1.0f : ramp);
            const float mask = 1.0f - ramp;
            r.theta[size_t(i)] = interpolation * (1.0f - mask) + extrapolation * mask;
        }
    } else {
        for (int64_t i = 0; i < half; ++i) r.theta[size_t(i)] = 1.0f / freq[size_t(i)];
    }
    if (is_gpt_oss_rope(c))
        for (int64_t i = 0; i < half; ++i) std::memcpy(&r.theta[size_t(i)], &kGptOssThetaBits[i], 4);
    return r;
}

void rope_cos_sin(const RopeTable& r, const int64_t* positions, int64_t n, float* cos_out,
                  float* sin_out) {
    const size_t half = r.theta.size();
    for (int64_t t = 0; t < n; ++t) {
        const float p = float(positions[t]);  // exact below 2^24
        for (size_t i = 0; i < half; ++i) {
            const float angle = p * r.theta[i];  // the float32 angle the reference forms
            cos_out[size_t(t) * half + i] = float(std::cos(double(angle))) * r.concentration;
            sin_out[size_t(t) * half + i] = float(std::sin(double(angle))) * r.concentration;
        }
    }
}

void apply_rope(float* x, int64_t n_heads, int64_t d, const float* cos, const float* sin) {
    const int64_t half = d / 2;
    for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + h * d;
        for (int64_t i = 0; i < half; ++i) {
            const float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

}  // namespace ossrun
