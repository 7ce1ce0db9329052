package hsm

// Three PKCS#11 calls made here rather than through miekg/pkcs11, because
// that package copies their secret bytes into C memory it frees without
// zeroing (the PIN for C_Login, the plaintext of C_Decrypt, the bytes of
// C_GenerateRandom), and freed C memory keeps them until it is reused — in
// a core, for instance. Here the token reads the PIN from, and writes
// plaintext and random bytes straight into, memory the caller owns and
// clears after use.
//
// The module is the one miekg/pkcs11 loaded: dlopen with RTLD_NOLOAD finds
// it without loading it again, and its C_GetFunctionList gives the same
// function table. The table's layout is fixed by the PKCS#11 standard
// (2.x, and the 2.x-compatible list of 3.x); where the module also exports
// the functions by name, each entry is checked against dlsym before use.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

typedef unsigned long ck_ulong;
typedef ck_ulong (*ck_get_function_list)(void **);
typedef ck_ulong (*ck_login)(ck_ulong session, ck_ulong user, unsigned char *pin, ck_ulong len);
typedef ck_ulong (*ck_decrypt)(ck_ulong session, unsigned char *in, ck_ulong in_len, unsigned char *out, ck_ulong *out_len);
typedef ck_ulong (*ck_generate_random)(ck_ulong session, unsigned char *out, ck_ulong len);

// The CK_FUNCTION_LIST of PKCS#11 2.40, section 5.2: a CK_VERSION, then
// the functions in the order the standard lists them, C_Initialize first.
struct pstd_function_list {
	unsigned char major, minor;
	void *fn[68];
};
enum { pstd_login = 18, pstd_decrypt = 34, pstd_generate_random = 64 };

static const char *pstd_names[] = {
	[pstd_login] = "C_Login",
	[pstd_decrypt] = "C_Decrypt",
	[pstd_generate_random] = "C_GenerateRandom",
};

// pstd_functions returns the function table of the already-loaded module
// at path, or NULL with *why set.
static struct pstd_function_list *pstd_functions(const char *path, const char **why) {
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL) {
		*why = "the module is not loaded";
		return NULL;
	}
	struct pstd_function_list *list = NULL;
	ck_get_function_list get = (ck_get_function_list)dlsym(h, "C_GetFunctionList");
	if (get == NULL || get((void **)&list) != 0 || list == NULL) {
		*why = "C_GetFunctionList failed";
		list = NULL;
	} else if (list->major != 2 && list->major != 3) {
		*why = "the module's function list is neither PKCS#11 2.x nor 3.x";
		list = NULL;
	} else {
		int idx[] = {pstd_login, pstd_decrypt, pstd_generate_random};
		for (size_t i = 0; i < sizeof idx / sizeof idx[0]; i++) {
			void *byName = dlsym(h, pstd_names[idx[i]]);
			if (list->fn[idx[i]] == NULL || (byName != NULL && byName != list->fn[idx[i]])) {
				*why = "the module's function list does not have the standard layout";
				list = NULL;
				break;
			}
		}
	}
	// miekg/pkcs11 holds its own handle: the module stays loaded.
	dlclose(h);
	return list;
}

static ck_ulong pstd_call_login(struct pstd_function_list *l, ck_ulong s, unsigned char *pin, ck_ulong len) {
	return ((ck_login)l->fn[pstd_login])(s, 1, pin, len); // CKU_USER
}
static ck_ulong pstd_call_decrypt(struct pstd_function_list *l, ck_ulong s, unsigned char *in, ck_ulong in_len, unsigned char *out, ck_ulong *out_len) {
	return ((ck_decrypt)l->fn[pstd_decrypt])(s, in, in_len, out, out_len);
}
static ck_ulong pstd_call_generate_random(struct pstd_function_list *l, ck_ulong s, unsigned char *out, ck_ulong len) {
	return ((ck_generate_random)l->fn[pstd_generate_random])(s, out, len);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// rawFuncs is the module's function table for the three calls.
type rawFuncs struct{ list *C.struct_pstd_function_list }

// loadRawFuncs finds the table of the module at path, which miekg/pkcs11
// has loaded.
func loadRawFuncs(path string) (rawFuncs, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var why *C.char
	list := C.pstd_functions(cpath, &why)
	if list == nil {
		return rawFuncs{}, fmt.Errorf("hsm: %s: %s", path, C.GoString(why))
	}
	return rawFuncs{list}, nil
}

func p11err(rv C.ck_ulong) error {
	if rv == 0 {
		return nil
	}
	return pkcs11.Error(rv)
}

// bytesPtr is b's first byte for C, or NULL for an empty b.
func bytesPtr(b []byte) *C.uchar {
	if len(b) == 0 {
		return nil
	}
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}

// login is C_Login as CKU_USER with pin read in place.
func (f rawFuncs) login(s pkcs11.SessionHandle, pin []byte) error {
	return p11err(C.pstd_call_login(f.list, C.ck_ulong(s), bytesPtr(pin), C.ck_ulong(len(pin))))
}

// decrypt is single-part C_Decrypt into out (which must be large enough:
// a too-small buffer is an error, not a retry); it returns out's prefix
// the token wrote.
func (f rawFuncs) decrypt(s pkcs11.SessionHandle, in, out []byte) ([]byte, error) {
	n := C.ck_ulong(len(out))
	if err := p11err(C.pstd_call_decrypt(f.list, C.ck_ulong(s), bytesPtr(in), C.ck_ulong(len(in)), bytesPtr(out), &n)); err != nil {
		return nil, err
	}
	if int(n) > len(out) {
		return nil, errors.New("hsm: C_Decrypt wrote past the buffer it was given")
	}
	return out[:n], nil
}

// generateRandom fills out from the token's RNG.
func (f rawFuncs) generateRandom(s pkcs11.SessionHandle, out []byte) error {
	return p11err(C.pstd_call_generate_random(f.list, C.ck_ulong(s), bytesPtr(out), C.ck_ulong(len(out))))
}
