/* Test-only shim for wine 8.0, never shipped: Rust's standard library (1.78 and later) imports
 * ProcessPrng from bcryptprimitives.dll, which wine 8.0 does not have, so no Rust program starts
 * under it. Built as bcryptprimitives.dll and put beside the .exe under test, this one exports
 * ProcessPrng on top of advapi32's RtlGenRandom (SystemFunction036). Windows has the real DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
