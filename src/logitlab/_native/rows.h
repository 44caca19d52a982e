/* The row-partition driver of the row kernels (xent, sparse, qexp): one place for how the rows of
 * a call are split over OpenMP threads.
 *
 * LL_ROW_PARTS(n_rows, threads, bytes, call) evaluates `call`, an int64_t expression in the names
 * r0, r1 and scratch, on ranges [r0, r1) that cover rows [0, n_rows):
 *   - threads <= 1, or a single row: one range, on the calling thread;
 *   - else up to 8 · threads contiguous ranges, handed to `threads` OpenMP threads as they free
 *     up (schedule(dynamic, 1): rows of one call can cost very different amounts, such as the
 *     solver steps of a threshold search), on the runtime torch itself uses when that is libgomp.
 * Each thread has its own scratch buffer of `bytes` bytes, `scratch` (void *; NULL when bytes is
 * 0), for all the ranges it runs. `call` returns -1, or a code >= 0 to report (a row index, or a
 * code made from one that orders as the rows do). The macro's value is -2 when a scratch buffer
 * could not be allocated (the ranges of that thread did not run), else the smallest code any
 * range returned (the first bad row), else -1.
 */
#ifndef LOGITLAB_ROWS_H
#define LOGITLAB_ROWS_H

#include <stdint.h>
#include <stdlib.h>

#define LL_ROW_PARTS(n_rows, threads, bytes, call)                                                            \
    __extension__({                                                                                           \
        const int64_t ll_rows_ = (n_rows);                                                                    \
        const int ll_threads_ = (threads);                                                                    \
        const size_t ll_bytes_ = (bytes);                                                                     \
        const int64_t ll_parts_ = ll_rows_ < 8 * (int64_t)ll_threads_ ? ll_rows_ : 8 * (int64_t)ll_threads_;  \
        int64_t ll_best_ = INT64_MAX;                                                                         \
        int ll_oom_ = 0;                                                                                      \
        if (ll_threads_ <= 1 || ll_parts_ <= 1) {                                                             \
            void *const scratch = ll_bytes_ ? malloc(ll_bytes_) : NULL;                                       \
            (void)scratch; /* a call without scratch memory does not name it */                               \
            if (ll_bytes_ && scratch == NULL) {                                                               \
                ll_oom_ = 1;                                                                                  \
            } else {                                                                                          \
                const int64_t r0 = 0, r1 = ll_rows_;                                                          \
                const int64_t ll_code_ = (call);                                                              \
                if (ll_code_ >= 0) ll_best_ = ll_code_;                                                       \
            }                                                                                                 \
            free(scratch);                                                                                    \
        } else {                                                                                              \
            _Pragma("omp parallel num_threads(ll_threads_) reduction(min : ll_best_) reduction(| : ll_oom_)") \
            {                                                                                                 \
                void *const scratch = ll_bytes_ ? malloc(ll_bytes_) : NULL;                                   \
                (void)scratch;                                                                                \
                if (ll_bytes_ && scratch == NULL) ll_oom_ = 1;                                                \
                _Pragma("omp for schedule(dynamic, 1)")                                                       \
                for (int64_t ll_i_ = 0; ll_i_ < ll_parts_; ll_i_++) {                                         \
                    if (ll_bytes_ && scratch == NULL) continue;                                               \
                    const int64_t r0 = ll_rows_ * ll_i_ / ll_parts_, r1 = ll_rows_ * (ll_i_ + 1) / ll_parts_; \
                    const int64_t ll_code_ = (call);                                                          \
                    if (ll_code_ >= 0 && ll_code_ < ll_best_) ll_best_ = ll_code_;                            \
                }                                                                                             \
                free(scratch);                                                                                \
            }                                                                                                 \
        }                                                                                                     \
        ll_oom_ ? (int64_t)-2 : ll_best_ == INT64_MAX ? (int64_t)-1 : ll_best_;                               \
    })

#endif
