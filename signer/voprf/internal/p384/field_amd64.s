//go:build amd64 && !purego

#include "textflag.h"

// p = 2^384 − 2^128 − 2^96 + 2^32 − 1, little-endian limbs.
DATA p<>+0(SB)/8, $0x00000000ffffffff
DATA p<>+8(SB)/8, $0xffffffff00000000
DATA p<>+16(SB)/8, $0xfffffffffffffffe
DATA p<>+24(SB)/8, $0xffffffffffffffff
DATA p<>+32(SB)/8, $0xffffffffffffffff
DATA p<>+40(SB)/8, $0xffffffffffffffff
GLOBL p<>(SB), RODATA|NOPTR, $48

// Montgomery multiplication, CIOS, one 64-bit word of y per row. The
// accumulator t is R8…R15 (t0…t7), CX is zero, SI and DI point to x and y.
// MULX leaves the flags alone, so the low halves of the products carry along
// the CF chain (ADCX) and the high halves along the OF chain (ADOX). Nothing
// here branches or indexes memory by a value.

// ROW adds x·y[off/8] to t.
#define ROW(off) \
	MOVQ off(DI), DX; \
	XORQ AX, AX; \
	MULXQ 0(SI), AX, BX; \
	ADCXQ AX, R8; \
	ADOXQ BX, R9; \
	MULXQ 8(SI), AX, BX; \
	ADCXQ AX, R9; \
	ADOXQ BX, R10; \
	MULXQ 16(SI), AX, BX; \
	ADCXQ AX, R10; \
	ADOXQ BX, R11; \
	MULXQ 24(SI), AX, BX; \
	ADCXQ AX, R11; \
	ADOXQ BX, R12; \
	MULXQ 32(SI), AX, BX; \
	ADCXQ AX, R12; \
	ADOXQ BX, R13; \
	MULXQ 40(SI), AX, BX; \
	ADCXQ AX, R13; \
	ADOXQ BX, R14; \
	ADCXQ CX, R14; \
	ADOXQ CX, R15; \
	ADCXQ CX, R15

// RED adds m·p to t, m = t0·(−p^−1) mod 2^64 = t0·(2^32 + 1), which clears
// t0, and shifts t down one word. It uses p's shape instead of multiplying:
// p = 2^384 − c with c = 2^128 + 2^96 − 2^32 + 1, so m·p = m·2^384 − m·c, and
// m·c = v0 + v1·2^64 + v2·2^128 + v3·2^192 with
//   v0 = m − lo, v1 = lo − hi − borrow, v2 = m + hi − borrow, v3 = carry,
// where m·2^32 = hi·2^64 + lo. t0 − v0 = 0 exactly (that is how m was
// chosen), so only v1…v3 are subtracted. The sum t + m·p is non-negative and
// below 2^512, so the eight-word arithmetic is exact.
#define RED \
	MOVQ R8, DX; \
	SHLQ $32, DX; \
	ADDQ R8, DX; \
	MOVQ DX, AX; \
	SHLQ $32, AX; \
	MOVQ DX, BX; \
	SHRQ $32, BX; \
	CMPQ DX, AX; \
	SBBQ BX, AX; \
	MOVQ DX, R8; \
	SBBQ $0, R8; \
	ADDQ BX, R8; \
	MOVQ CX, BX; \
	ADCQ CX, BX; \
	ADDQ DX, R14; \
	ADCQ CX, R15; \
	SUBQ AX, R9; \
	SBBQ R8, R10; \
	SBBQ BX, R11; \
	SBBQ CX, R12; \
	SBBQ CX, R13; \
	SBBQ CX, R14; \
	SBBQ CX, R15; \
	MOVQ R9, R8; \
	MOVQ R10, R9; \
	MOVQ R11, R10; \
	MOVQ R12, R11; \
	MOVQ R13, R12; \
	MOVQ R14, R13; \
	MOVQ R15, R14; \
	XORQ R15, R15

// func feMulADX(z, x, y *fe)
TEXT ·feMulADX(SB), NOSPLIT, $0-24
	MOVQ x+8(FP), SI
	MOVQ y+16(FP), DI
	XORQ CX, CX
	XORQ R8, R8
	XORQ R9, R9
	XORQ R10, R10
	XORQ R11, R11
	XORQ R12, R12
	XORQ R13, R13
	XORQ R14, R14
	XORQ R15, R15

	ROW(0)
	RED
	ROW(8)
	RED
	ROW(16)
	RED
	ROW(24)
	RED
	ROW(32)
	RED
	ROW(40)
	RED

	// t < 2p in R8…R14: subtract p and keep the difference unless it borrowed.
	MOVQ R8, AX
	MOVQ R9, BX
	MOVQ R10, CX
	MOVQ R11, DX
	MOVQ R12, SI
	MOVQ R13, DI
	SUBQ p<>+0(SB), AX
	SBBQ p<>+8(SB), BX
	SBBQ p<>+16(SB), CX
	SBBQ p<>+24(SB), DX
	SBBQ p<>+32(SB), SI
	SBBQ p<>+40(SB), DI
	SBBQ $0, R14
	CMOVQCC AX, R8
	CMOVQCC BX, R9
	CMOVQCC CX, R10
	CMOVQCC DX, R11
	CMOVQCC SI, R12
	CMOVQCC DI, R13

	MOVQ z+0(FP), AX
	MOVQ R8, 0(AX)
	MOVQ R9, 8(AX)
	MOVQ R10, 16(AX)
	MOVQ R11, 24(AX)
	MOVQ R12, 32(AX)
	MOVQ R13, 40(AX)
	RET

// func feSqrADX(z, x *fe)
// z = x²·R^−1 mod p. The square T = x² is formed with 15 cross products
// (doubled) and 6 squares instead of 36 products, then reduced as
// T_high + (T_low + M·p)/R: six RED rounds on the low half alone (so the
// window's top word stays small, as in feMulADX), plus the high half. With
// T_low < R, M < R and T_high < p, that sum is below 2p. The high half waits
// in the 48-byte frame: 0(SP)…40(SP) hold T's words 6…11.
TEXT ·feSqrADX(SB), NOSPLIT, $48-16
	MOVQ x+8(FP), SI
	XORQ CX, CX

	// Cross products a_i·a_j, i < j, into words 1…10: R8…R15, DI, BX.
	MOVQ 0(SI), DX
	MULXQ 8(SI), R8, R9
	MULXQ 16(SI), AX, R10
	ADDQ AX, R9
	MULXQ 24(SI), AX, R11
	ADCQ AX, R10
	MULXQ 32(SI), AX, R12
	ADCQ AX, R11
	MULXQ 40(SI), AX, R13
	ADCQ AX, R12
	ADCQ $0, R13

	MOVQ 8(SI), DX
	XORQ R14, R14
	MULXQ 16(SI), AX, BX
	ADCXQ AX, R10
	ADOXQ BX, R11
	MULXQ 24(SI), AX, BX
	ADCXQ AX, R11
	ADOXQ BX, R12
	MULXQ 32(SI), AX, BX
	ADCXQ AX, R12
	ADOXQ BX, R13
	MULXQ 40(SI), AX, BX
	ADCXQ AX, R13
	ADOXQ BX, R14
	ADCXQ CX, R14

	MOVQ 16(SI), DX
	XORQ R15, R15
	MULXQ 24(SI), AX, BX
	ADCXQ AX, R12
	ADOXQ BX, R13
	MULXQ 32(SI), AX, BX
	ADCXQ AX, R13
	ADOXQ BX, R14
	MULXQ 40(SI), AX, BX
	ADCXQ AX, R14
	ADOXQ BX, R15
	ADCXQ CX, R15

	MOVQ 24(SI), DX
	XORQ DI, DI
	MULXQ 32(SI), AX, BX
	ADCXQ AX, R14
	ADOXQ BX, R15
	MULXQ 40(SI), AX, BX
	ADCXQ AX, R15
	ADOXQ BX, DI
	ADCXQ CX, DI

	MOVQ 32(SI), DX
	MULXQ 40(SI), AX, BX
	ADDQ AX, DI
	ADCQ $0, BX

	// Double words 1…10; the carry is word 11 (AX).
	ADDQ R8, R8
	ADCQ R9, R9
	ADCQ R10, R10
	ADCQ R11, R11
	ADCQ R12, R12
	ADCQ R13, R13
	ADCQ R14, R14
	ADCQ R15, R15
	ADCQ DI, DI
	ADCQ BX, BX
	MOVQ CX, AX
	ADCQ CX, AX

	// Words 8…11 to the frame, then add the squares a_i² at words 2i, 2i+1;
	// word 0 is R15.
	MOVQ R15, 16(SP)
	MOVQ DI, 24(SP)
	MOVQ BX, 32(SP)
	MOVQ AX, 40(SP)
	MOVQ 0(SI), DX
	MULXQ DX, R15, AX
	ADDQ AX, R8
	MOVQ 8(SI), DX
	MULXQ DX, AX, BX
	ADCQ AX, R9
	ADCQ BX, R10
	MOVQ 16(SI), DX
	MULXQ DX, AX, BX
	ADCQ AX, R11
	ADCQ BX, R12
	MOVQ 24(SI), DX
	MULXQ DX, AX, BX
	ADCQ AX, R13
	ADCQ BX, R14
	MOVQ 32(SI), DX
	MULXQ DX, AX, BX
	ADCQ AX, 16(SP)
	ADCQ BX, 24(SP)
	MOVQ 40(SI), DX
	MULXQ DX, AX, BX
	ADCQ AX, 32(SP)
	ADCQ BX, 40(SP)

	// Words 6 and 7 to the frame; T_low (words 0…5) to R8…R13 under the
	// zero window top R14, R15.
	MOVQ R13, 0(SP)
	MOVQ R14, 8(SP)
	MOVQ R12, R13
	MOVQ R11, R12
	MOVQ R10, R11
	MOVQ R9, R10
	MOVQ R8, R9
	MOVQ R15, R8
	XORQ R14, R14
	XORQ R15, R15

	RED
	RED
	RED
	RED
	RED
	RED

	// + T_high
	ADDQ 0(SP), R8
	ADCQ 8(SP), R9
	ADCQ 16(SP), R10
	ADCQ 24(SP), R11
	ADCQ 32(SP), R12
	ADCQ 40(SP), R13
	ADCQ $0, R14

	// t < 2p in R8…R14: subtract p and keep the difference unless it borrowed.
	MOVQ R8, AX
	MOVQ R9, BX
	MOVQ R10, CX
	MOVQ R11, DX
	MOVQ R12, SI
	MOVQ R13, DI
	SUBQ p<>+0(SB), AX
	SBBQ p<>+8(SB), BX
	SBBQ p<>+16(SB), CX
	SBBQ p<>+24(SB), DX
	SBBQ p<>+32(SB), SI
	SBBQ p<>+40(SB), DI
	SBBQ $0, R14
	CMOVQCC AX, R8
	CMOVQCC BX, R9
	CMOVQCC CX, R10
	CMOVQCC DX, R11
	CMOVQCC SI, R12
	CMOVQCC DI, R13

	MOVQ z+0(FP), AX
	MOVQ R8, 0(AX)
	MOVQ R9, 8(AX)
	MOVQ R10, 16(AX)
	MOVQ R11, 24(AX)
	MOVQ R12, 32(AX)
	MOVQ R13, 40(AX)
	RET
