// The machine's ceilings, measured (machine_probe.cpp): what `ossrun bench` reports its decode
// bandwidth and prefill arithmetic rate against.
#pragma once
#include <cstddef>
#include <string>

namespace ossrun {

// GB/s read by `threads` threads streaming disjoint parts of a `bytes` buffer (best of 5).
double measure_read_bandwidth(int threads, size_t bytes);
// Int16 multiply-adds per second x 2, in G, with the best int16 dot-product instruction this CPU
// has (named in *instruction); 0 where there is none.
double measure_int16_peak(int threads, std::string* instruction);

}  // namespace ossrun
