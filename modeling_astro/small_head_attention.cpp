// Scaled dot-product attention for CPUs and small heads (head_dim 8, 16 or 32), float32 or bfloat16.
//
// The paper model's heads are 8-32 wide: ATen's CPU flash attention, built for heads of 64-128, spends its time
// on per-tile overhead there. Here each (star, head) first packs its attended keys and values to float32, then:
// - with many queries (the encoder), 16 queries sit in the lanes of a vector: scores, softmax and the weighted
//   sum of values are lane-wise multiply-adds, without horizontal reductions;
// - with fewer than 8 queries (the decoder's requests), the keys sit in the lanes instead, so that no lane idles.
// In bfloat16 on CPUs with AVX512-BF16 the first form multiplies bfloat16 pairs (`vdpbf16ps`), for few queries too
// up to head_dim 16.
// Accumulation is in float32; bfloat16 outputs are rounded to nearest even. Threads: OpenMP over (star, head),
// the runtime torch itself uses (torch's libgomp is already loaded when this library is), so
// `torch.set_num_threads` applies. Built and loaded by modeling_astro/small_head_attention.py.
#include <cstdint>
#include <cstring>
#include <type_traits>
#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t LANES = 16;
typedef float vfloat __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(LANES * sizeof(int32_t))));

struct bfloat16 {
    uint16_t bits;
};

inline float to_float(float x) { return x; }
inline float to_float(bfloat16 x) {
    const uint32_t bits = uint32_t(x.bits) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}
inline void store(float *x, float value) { *x = value; }
inline void store(bfloat16 *x, float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest even
    x->bits = uint16_t(bits >> 16);
}

inline vfloat splat(float x) { return vfloat{} + x; }
inline vfloat load_vector(const float *x) {
    vfloat v;
    std::memcpy(&v, x, sizeof v);
    return v;
}
inline void store_vector(float *x, vfloat v) { std::memcpy(x, &v, sizeof v); }
inline vfloat vmax(vfloat a, vfloat b) { return a > b ? a : b; }
inline float horizontal_max(vfloat v) {
    float top = v[0];
    for (int64_t lane = 1; lane < LANES; ++lane) top = v[lane] > top ? v[lane] : top;
    return top;
}
inline float horizontal_sum(vfloat v) {
    float total = 0.0f;
    for (int64_t lane = 0; lane < LANES; ++lane) total += v[lane];
    return total;
}

// 2^x for x <= 0, lane-wise: x = n + f with n an integer and |f| <= 1/2, 2^f by a polynomial fitted on
// [-1/2, 1/2] (least squares at Chebyshev nodes): degree 5 for float32 (relative error 1.4e-7), degree 3 for
// bfloat16 outputs (7.7e-5, far below bfloat16's rounding of 3.9e-3). The scores are in log2 units: the queries
// are scaled by log2(e) too.
template <typename T>
inline vfloat exp2_nonpositive(vfloat x) {
    const vfloat round = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    x = vmax(x, splat(-126.0f));
    const vfloat n = (x + round) - round;
    const vfloat f = x - n;
    vfloat p;
    if constexpr (std::is_same_v<T, float>) {
        p = splat(1.3266970636323094e-3f);
        p = p * f + 9.675459936261177e-3f;
        p = p * f + 5.550742521882057e-2f;
        p = p * f + 2.4022121727466583e-1f;
        p = p * f + 6.931469440460205e-1f;
        p = p * f + 1.0000001192092896f;
    } else {
        p = splat(5.508868396282196e-2f);
        p = p * f + 2.4260404706001282e-1f;
        p = p * f + 6.932762265205383e-1f;
        p = p * f + 9.999289512634277e-1f;
    }
    return p * (vfloat)((__builtin_convertvector(n, vint) + 127) << 23);
}

// Up to LANES queries of one (star, head) in the vector lanes; `key`/`value` (num_keys, D) packed float32,
// `scores` room for num_keys vectors.
template <typename T, int64_t D>
inline void queries_in_lanes(const T *query, const float *key, const float *value, T *out, vfloat *scores,
                             int64_t width, int64_t num_keys, int64_t num_queries, float scale) {
    // queries and outputs go through `staging` (D, LANES): row-wise conversions, then whole vectors
    alignas(64) float staging[D * LANES] = {};
    for (int64_t i = 0; i < num_queries; ++i)
        for (int64_t d = 0; d < D; ++d) staging[d * LANES + i] = to_float(query[i * width + d]) * scale;
    vfloat q[D];
    for (int64_t d = 0; d < D; ++d) q[d] = load_vector(staging + d * LANES);
    vfloat maximum = splat(-3.0e38f);
    for (int64_t j = 0; j < num_keys; ++j) {
        vfloat score{};
        for (int64_t d = 0; d < D; ++d) score += key[j * D + d] * q[d];
        scores[j] = score;
        maximum = vmax(maximum, score);
    }
    vfloat total{}, o[D];
    for (int64_t d = 0; d < D; ++d) o[d] = vfloat{};
    for (int64_t j = 0; j < num_keys; ++j) {
        const vfloat p = exp2_nonpositive<T>(scores[j] - maximum);
        total += p;
        for (int64_t d = 0; d < D; ++d) o[d] += value[j * D + d] * p;
    }
    const vfloat inverse = 1.0f / total;
    for (int64_t d = 0; d < D; ++d) store_vector(staging + d * LANES, o[d] * inverse);
    for (int64_t i = 0; i < num_queries; ++i)
        for (int64_t d = 0; d < D; ++d) store(out + i * width + d, staging[d * LANES + i]);
}

#ifdef __AVX512BF16__
// queries_in_lanes for bfloat16 on CPUs with AVX512-BF16: dot products of bfloat16 pairs (`vdpbf16ps`, float32
// accumulation) halve the multiply-adds. `key_pairs` (num_keys, D / 2) holds each key's bfloat16 pairs as
// stored; `value_pairs` (ceil(num_keys / 2), D) the values of keys 2m and 2m + 1 side by side. The softmax
// weights enter the weighted sum rounded to bfloat16 (as in ATen's bfloat16 attention); their normaliser does not.
template <int64_t D>
inline void queries_in_lanes_bf16_dot(const bfloat16 *query, const uint32_t *key_pairs, const uint32_t *value_pairs,
                                      bfloat16 *out, vfloat *scores, int64_t width, int64_t num_keys,
                                      int64_t num_queries, float scale) {
    constexpr int64_t PAIRS = D / 2;
    alignas(64) uint32_t query_staging[PAIRS * LANES] = {};
    for (int64_t i = 0; i < num_queries; ++i)
        for (int64_t m = 0; m < PAIRS; ++m) std::memcpy(&query_staging[m * LANES + i], query + i * width + 2 * m, 4);
    __m512bh q[PAIRS];
    for (int64_t m = 0; m < PAIRS; ++m) q[m] = (__m512bh)_mm512_load_si512(query_staging + m * LANES);
    vfloat maximum = splat(-3.0e38f);
    for (int64_t j = 0; j < num_keys; ++j) {
        __m512 dot = _mm512_setzero_ps();
        for (int64_t m = 0; m < PAIRS; ++m)
            dot = _mm512_dpbf16_ps(dot, q[m], (__m512bh)_mm512_set1_epi32(int(key_pairs[j * PAIRS + m])));
        const vfloat score = (vfloat)dot * scale;
        scores[j] = score;
        maximum = vmax(maximum, score);
    }
    // word 2i of a pair vector = weight i of the even key, word 2i + 1 = weight i of the odd key
    alignas(64) static const uint16_t interleave[2 * LANES] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                               21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                               11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i order = _mm512_load_si512(interleave);
    vfloat total{};
    __m512 o[D];
    for (int64_t d = 0; d < D; ++d) o[d] = _mm512_setzero_ps();
    for (int64_t j = 0; j < num_keys; j += 2) {
        const vfloat even = exp2_nonpositive<bfloat16>(scores[j] - maximum);
        const vfloat odd = j + 1 < num_keys ? exp2_nonpositive<bfloat16>(scores[j + 1] - maximum) : vfloat{};
        total += even + odd;
        const __m512bh weights =
            (__m512bh)_mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh((__m512)odd, (__m512)even));
        for (int64_t d = 0; d < D; ++d)
            o[d] = _mm512_dpbf16_ps(o[d], weights, (__m512bh)_mm512_set1_epi32(int(value_pairs[j / 2 * D + d])));
    }
    const vfloat inverse = 1.0f / total;
    alignas(64) float staging[D * LANES];
    for (int64_t d = 0; d < D; ++d) store_vector(staging + d * LANES, (vfloat)o[d] * inverse);
    for (int64_t i = 0; i < num_queries; ++i)
        for (int64_t d = 0; d < D; ++d) store(out + i * width + d, staging[d * LANES + i]);
}
#endif

// Each query of one (star, head) with the keys in the vector lanes; `key_t` (D, padded_keys) packed transposed
// and zero beyond num_keys, `value` (num_keys, D), `weights` room for padded_keys floats.
template <typename T, int64_t D>
inline void keys_in_lanes(const T *query, const float *key_t, const float *value, T *out, float *weights,
                          int64_t width, int64_t num_keys, int64_t padded_keys, int64_t num_queries, float scale) {
    for (int64_t i = 0; i < num_queries; ++i) {
        float q[D];
        for (int64_t d = 0; d < D; ++d) q[d] = to_float(query[i * width + d]) * scale;
        vfloat maximum = splat(-3.0e38f);
        for (int64_t j0 = 0; j0 < padded_keys; j0 += LANES) {
            vfloat score{};
            for (int64_t d = 0; d < D; ++d) score += load_vector(key_t + d * padded_keys + j0) * q[d];
            if (j0 + LANES > num_keys)  // the padding lanes of the last block take no weight
                for (int64_t j = num_keys - j0; j < LANES; ++j) score[j] = -3.0e38f;
            store_vector(weights + j0, score);
            maximum = vmax(maximum, score);
        }
        const float top = horizontal_max(maximum);
        vfloat sum{};
        for (int64_t j0 = 0; j0 < padded_keys; j0 += LANES) {
            vfloat p = exp2_nonpositive<T>(load_vector(weights + j0) - top);
            if (j0 + LANES > num_keys)
                for (int64_t j = num_keys - j0; j < LANES; ++j) p[j] = 0.0f;
            store_vector(weights + j0, p);
            sum += p;
        }
        // two accumulators over alternate keys: half the dependency chain
        float even[D] = {}, odd[D] = {};
        int64_t j = 0;
        for (; j + 1 < num_keys; j += 2)
            for (int64_t d = 0; d < D; ++d) {
                even[d] += weights[j] * value[j * D + d];
                odd[d] += weights[j + 1] * value[(j + 1) * D + d];
            }
        if (j < num_keys)
            for (int64_t d = 0; d < D; ++d) even[d] += weights[j] * value[j * D + d];
        const float inverse = 1.0f / horizontal_sum(sum);
        for (int64_t d = 0; d < D; ++d) store(out + i * width + d, (even[d] + odd[d]) * inverse);
    }
}

// One (star, head): pointers at the star's first row and the head's first column; `keep` the star's key mask.
template <typename T, int64_t D>
void star_head(const T *query, const T *key, const T *value, const uint8_t *keep, T *out, int64_t width,
               int64_t num_queries, int64_t num_keys, float scale) {
    const bool transposed = num_queries < LANES / 2;
    scale *= 1.4426950408889634f;  // log2(e): softmax with 2^x
    int64_t kept = 0;
    for (int64_t j = 0; j < num_keys; ++j) kept += keep[j] != 0;
#ifdef __AVX512BF16__
    if constexpr (std::is_same_v<T, bfloat16>) {
        // also for few queries: cheaper than keys in lanes up to D = 16 (at D = 32 the accumulators spill)
        if (!transposed || D <= 16) {
            alignas(64) uint32_t key_pairs[kept * D / 2], value_pairs[(kept + 1) / 2 * D];
            uint16_t *value_words = reinterpret_cast<uint16_t *>(value_pairs);
            for (int64_t d = 0; d < D; ++d)  // an odd last key: its missing partner has value 0 (and weight 0)
                value_words[((kept + 1) / 2 * D - D + d) * 2 + 1] = 0;
            for (int64_t j = 0, row = 0; j < num_keys; ++j) {
                if (!keep[j]) continue;
                std::memcpy(key_pairs + row * D / 2, key + j * width, D * sizeof(bfloat16));
                for (int64_t d = 0; d < D; ++d)
                    value_words[(row / 2 * D + d) * 2 + row % 2] = value[j * width + d].bits;
                ++row;
            }
            alignas(64) vfloat scores[kept];
            for (int64_t i0 = 0; i0 < num_queries; i0 += LANES) {
                const int64_t n = num_queries - i0 < LANES ? num_queries - i0 : LANES;
                queries_in_lanes_bf16_dot<D>(query + i0 * width, key_pairs, value_pairs, out + i0 * width, scores,
                                             width, kept, n, scale);
            }
            return;
        }
    }
#endif
    const int64_t padded = (kept + LANES - 1) / LANES * LANES;
    alignas(64) float k[padded * D], v[kept * D];
    if (transposed) std::memset(k, 0, sizeof k);
    for (int64_t j = 0, row = 0; j < num_keys; ++j) {
        if (!keep[j]) continue;
        if (transposed)
            for (int64_t d = 0; d < D; ++d) k[d * padded + row] = to_float(key[j * width + d]);
        else
            for (int64_t d = 0; d < D; ++d) k[row * D + d] = to_float(key[j * width + d]);
        for (int64_t d = 0; d < D; ++d) v[row * D + d] = to_float(value[j * width + d]);
        ++row;
    }
    alignas(64) vfloat scores[transposed ? padded / LANES : kept];
    if (transposed) {
        keys_in_lanes<T, D>(query, k, v, out, (float *)scores, width, kept, padded, num_queries, scale);
        return;
    }
    for (int64_t i0 = 0; i0 < num_queries; i0 += LANES) {
        const int64_t n = num_queries - i0 < LANES ? num_queries - i0 : LANES;
        queries_in_lanes<T, D>(query + i0 * width, k, v, out + i0 * width, scores, width, kept, n, scale);
    }
}

template <typename T>
int attention(const T *query, const T *key, const T *value, const uint8_t *keep, T *out, int64_t batch,
              int64_t num_heads, int64_t head_dim, int64_t num_queries, int64_t num_keys, float scale) {
    void (*run)(const T *, const T *, const T *, const uint8_t *, T *, int64_t, int64_t, int64_t, float);
    switch (head_dim) {
        case 8: run = star_head<T, 8>; break;
        case 16: run = star_head<T, 16>; break;
        case 32: run = star_head<T, 32>; break;
        default: return -1;
    }
    const int64_t width = num_heads * head_dim;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t h = 0; h < num_heads; ++h)
            run(query + b * num_queries * width + h * head_dim, key + b * num_keys * width + h * head_dim,
                value + b * num_keys * width + h * head_dim, keep + b * num_keys,
                out + b * num_queries * width + h * head_dim, width, num_queries, num_keys, scale);
    return 0;
}

}  // namespace

// Attention of `batch` stars, all contiguous: query/out (batch, num_queries, num_heads *
// head_dim), key/value (batch, num_keys, num_heads * head_dim), keep (batch, num_keys) with 1 where the key may
// be attended (every star needs one). Returns 0, or -1 for a head_dim without a specialisation.
extern "C" int attention_f32(const float *query, const float *key, const float *value, const uint8_t *keep,
                             float *out, int64_t batch, int64_t num_heads, int64_t head_dim, int64_t num_queries,
                             int64_t num_keys, float scale) {
    return attention(query, key, value, keep, out, batch, num_heads, head_dim, num_queries, num_keys, scale);
}

extern "C" int attention_bf16(const uint16_t *query, const uint16_t *key, const uint16_t *value,
                              const uint8_t *keep, uint16_t *out, int64_t batch, int64_t num_heads,
                              int64_t head_dim, int64_t num_queries, int64_t num_keys, float scale) {
    return attention(reinterpret_cast<const bfloat16 *>(query), reinterpret_cast<const bfloat16 *>(key),
                     reinterpret_cast<const bfloat16 *>(value), keep, reinterpret_cast<bfloat16 *>(out), batch,
                     num_heads, head_dim, num_queries, num_keys, scale);
}
