// tvmcomp: size TVM's CPU thread pool from the artifact's manifest ("runtime": {"threads": N}).
//
// Copy this header into any app that links a tvmcomp model.so, and call ConfigureThreads()
// before the first inference. TVM's pool reads TVM_NUM_THREADS once, when the first parallel
// kernel runs; left to its defaults it ran LeNet-5 2.5x slower at batch 1 on a 2-vCPU VM
// (examples/cpp_deploy, 36.6 vs 14.3 us). A value the user set wins.
#pragma once

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace tvmcomp {

/*! \brief Cores this process may run on (its CPU affinity). */
inline int UsableCores() {
  cpu_set_t set;
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set)) : 1;
}

/*!
 * \brief Set TVM_NUM_THREADS to min(manifest threads, usable cores) unless it is set.
 * \param manifest_threads the manifest's runtime.threads (0 or less: the usable cores).
 * \return the threads set, or 0 when the user's TVM_NUM_THREADS decides.
 */
inline int ConfigureThreads(int manifest_threads) {
  if (std::getenv("TVM_NUM_THREADS") != nullptr) return 0;
  int usable = UsableCores();
  int n = manifest_threads > 0 ? std::min(manifest_threads, usable) : usable;
  setenv("TVM_NUM_THREADS", std::to_string(n).c_str(), 0);
  return n;
}

}  // namespace tvmcomp
