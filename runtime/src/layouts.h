/* The one-column copies of an unstructured matrix, built in C (the runtime) as the Python package builds
 * them in numpy. */
#ifndef SPARSERNN_LAYOUTS_H
#define SPARSERNN_LAYOUTS_H

#include "kernels.h"

/* Adds to m (CSR with uint16 indices) its one-column copy with `lanes` (8: interleaved, 16: sliced), windows
 * dividing rows_unit, its values in bfloat16 when bf16 is set (m's values are then bfloat16 numbers, as
 * read from a bf16 file), and chooses its kernels again; the arrays it allocates go to owned (free them
 * with the matrix). 1 when made, 0 when the matrix has no such copy (blocks, int32 indices, no window), -1
 * when out of memory. */
int sr_one_column_copy(Matrix *m, long rows_unit, int lanes, int bf16, void *owned[4]);

/* Adds to m (CSR with uint16 indices and int8 values q) the one-column copy with int8 values that
 * sr_int8_kernel reads (lanes 8: interleaved; 16: quad) and qsum, and chooses its kernels again; arrays
 * to owned (5); returns as sr_one_column_copy (0 also where the portable kernel runs). */
int sr_int8_copy(Matrix *m, long rows_unit, void *owned[5]);

#endif
