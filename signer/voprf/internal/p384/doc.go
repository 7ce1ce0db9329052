// Package p384 is constant-time arithmetic on the NIST P-384 curve for the
// VOPRF issuer: the field in Montgomery form (six 64-bit limbs; MULX/ADX
// assembly on amd64 CPUs that have it, unrolled portable Go everywhere else
// and under the purego build tag; both reduce with p's special shape rather
// than a multiplication), points in homogeneous projective coordinates with
// the complete formulas of Renes, Costello and Batina
// (https://eprint.iacr.org/2015/1060, algorithms 4 and 6 for a = −3), a
// constant-time variable-base scalar multiplication whose doubling runs use
// Jacobian coordinates, a constant-time fixed-base multiplication by the
// generator from a precomputed table, and two variable-time operations for
// public inputs only: a multi-scalar multiplication (Straus, Jacobian
// accumulator, affine tables) and RFC 9380's simplified SWU map for
// hash_to_curve.
//
// filippo.io/nistec and cloudflare/circl are the independent references its
// tests and fuzz targets compare against. circl's own ecc/p384 is not used: its
// ScalarMult is documented as "not fully constant time" (it reduces and
// recodes the scalar with math/big, e.g. big.Int.Mod and Bytes, whose running
// time and output length depend on the value) and measured no faster than
// nistec here.
//
// # Constant time
//
// Every function that may see a secret scalar — ScalarMult, ScalarBaseMult —
// and everything they call runs the same instruction sequence and touches
// the same memory addresses whatever the scalar's value:
//
//   - field operations have no branches on limb values: carries and borrows
//     become all-zero or all-one masks, and the final conditional
//     subtraction of a Montgomery product or a modular sum is a masked
//     select (CMOV in the assembly);
//   - the point formulas are complete, so no input (the identity, equal
//     points, a point and its negation) takes a special path;
//   - the scalar is recoded with Booth's signed 5-bit windows by bit
//     arithmetic alone; each digit's table entry is chosen by reading all
//     sixteen entries and keeping one under a mask (Point.lookup), and a
//     negative digit negates that entry by a masked select;
//   - the loop runs a fixed number of iterations (77 windows of 5 bits over
//     all 384 scalar bits, leading zeros included);
//   - the Jacobian doubling (dbl-2001-b) has no exceptional input on a curve
//     of prime order once the identity is held as (1 : 1 : 0), which the
//     conversion from projective coordinates selects under a mask.
//
// BenchmarkDudect is a manual statistical check of the above.
//
// What may branch is public: whether the final result is the identity (the
// callers multiply a non-identity point of prime order by a scalar in
// [1, n−1], so it never is), the encoding and decoding of public points, and
// the variable-time MultiScalarMult and SetUniformBytes, whose inputs must be
// public.
package p384
