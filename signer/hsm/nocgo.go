//go:build !cgo

// This file exists only to turn a cgo-less build into one clear error.
//
// The PKCS#11 binding (github.com/miekg/pkcs11, under crypto11) is C code
// reached through cgo, so signer/hsm cannot be built without cgo. Left to
// itself, `CGO_ENABLED=0 go build` fails deep inside crypto11 with a screen
// of "undefined: pkcs11.Ctx" errors that do not say why. An undefined
// identifier here would not help: the go command never compiles a package
// whose dependency failed. A go:embed pattern, though, is checked when the
// package is loaded, before anything compiles, so the build stops with this
// file's one line:
//
//	signer/hsm/nocgo.go:NN:12: pattern pstd_needs_cgo__build_with_CGO_ENABLED=1_and_a_C_compiler: no matching files found
//
// Fix: build with CGO_ENABLED=1 (the default when a C compiler is on PATH;
// deploy/dev/deps.sh installs gcc). deploy/dev/test.sh checks this message.

package hsm

import _ "embed"

//go:embed pstd_needs_cgo__build_with_CGO_ENABLED=1_and_a_C_compiler
var needsCgo string
