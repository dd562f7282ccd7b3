/*
 * A simulated libnvidia-ml.so.1: the NVML C functions the node agent reaches through nvidia-ml-py, with NVML's
 * power-management semantics, for nodes without a GPU (the real-node tier). It lets the production agent, with
 * the real nvidia-ml-py binding, run unchanged in a real pod: the library is put on its LD_LIBRARY_PATH the way the
 * NVIDIA container runtime injects the driver's.
 *
 * Semantics held to NVML's documentation and to simulator/fleet/nvml.py: limits in milliwatts, per device, within
 * nvmlDeviceGetPowerManagementLimitConstraints (else NVML_ERROR_INVALID_ARGUMENT); setting a limit needs root
 * (else NVML_ERROR_NO_PERMISSION); every call but nvmlInit and nvmlErrorString before nvmlInit gives
 * NVML_ERROR_UNINITIALIZED; a set limit outlives the process, as a driver's does, until the default is set back.
 *
 * Configured by the environment: EBBTIDE_SIMNVML_GPUS (devices, default 1), EBBTIDE_SIMNVML_MIN_MW and
 * EBBTIDE_SIMNVML_MAX_MW (the constraints; the maximum is also the default limit; default an H100 SXM's 200 W and
 * 700 W), EBBTIDE_SIMNVML_IDLE_MW (the draw, default 70 W) and EBBTIDE_SIMNVML_STATE (a file holding the limits
 * in force, one line per device, 0 for the default; in memory only when unset).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_DEVICES 64

struct nvmlDevice_st {
    unsigned int index;
};
typedef struct nvmlDevice_st *nvmlDevice_t;

static struct nvmlDevice_st devices[MAX_DEVICES];
static unsigned int limits_mw[MAX_DEVICES]; /* 0: the default limit */
static int init_count = 0;
static unsigned int count = 1, min_mw = 200000, max_mw = 700000, idle_mw = 70000;

static unsigned int env_uint(const char *name, unsigned int fallback) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') return fallback;
    char *end = NULL;
    unsigned long n = strtoul(v, &end, 10);
    return (end != NULL && *end == '\0') ? (unsigned int)n : fallback;
}

static void load_state(void) {
    const char *path = getenv("EBBTIDE_SIMNVML_STATE");
    if (path == NULL || *path == '\0') return;
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    for (unsigned int i = 0; i < count; i++) {
        if (fscanf(f, "%u", &limits_mw[i]) != 1) break;
    }
    fclose(f);
}

static nvmlReturn_t save_state(void) {
    const char *path = getenv("EBBTIDE_SIMNVML_STATE");
    if (path == NULL || *path == '\0') return NVML_SUCCESS;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return NVML_ERROR_UNKNOWN;
    FILE *f = fopen(tmp, "w");
    if (f == NULL) return NVML_ERROR_UNKNOWN;
    for (unsigned int i = 0; i < count; i++) fprintf(f, "%u\n", limits_mw[i]);
    if (fclose(f) != 0 || rename(tmp, path) != 0) return NVML_ERROR_UNKNOWN;
    return NVML_SUCCESS;
}

static int device_index(nvmlDevice_t device, unsigned int *index) {
    if (device == NULL || device < devices || device >= devices + count) return 0;
    *index = device->index;
    return 1;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    if (init_count++ == 0) {
        count = env_uint("EBBTIDE_SIMNVML_GPUS", 1);
        if (count > MAX_DEVICES) count = MAX_DEVICES;
        min_mw = env_uint("EBBTIDE_SIMNVML_MIN_MW", min_mw);
        max_mw = env_uint("EBBTIDE_SIMNVML_MAX_MW", max_mw);
        idle_mw = env_uint("EBBTIDE_SIMNVML_IDLE_MW", idle_mw);
        for (unsigned int i = 0; i < count; i++) {
            devices[i].index = i;
            limits_mw[i] = 0;
        }
        load_state();
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *device_count) {
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (device_count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *device_count = count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device, unsigned int *lo, unsigned int *hi) {
    unsigned int i;
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (!device_index(device, &i) || lo == NULL || hi == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *lo = min_mw;
    *hi = max_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device, unsigned int *limit) {
    unsigned int i;
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (!device_index(device, &i) || limit == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *limit = max_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
    unsigned int i;
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (!device_index(device, &i) || limit == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *limit = limits_mw[i] ? limits_mw[i] : max_mw;
    return NVML_SUCCESS;
}

/* One agent sets the limits; with no other constraint (no in-band host limit) the enforced limit is the set one. */
nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    return nvmlDeviceGetPowerManagementLimit(device, limit);
}

nvmlReturn_t nvmlDeviceSetPowerManagementLimit(nvmlDevice_t device, unsigned int limit) {
    unsigned int i;
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (!device_index(device, &i)) return NVML_ERROR_INVALID_ARGUMENT;
    if (geteuid() != 0) return NVML_ERROR_NO_PERMISSION;
    if (limit < min_mw || limit > max_mw) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int before = limits_mw[i];
    limits_mw[i] = limit == max_mw ? 0 : limit;
    nvmlReturn_t saved = save_state();
    if (saved != NVML_SUCCESS) limits_mw[i] = before;
    return saved;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    unsigned int i, limit;
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (!device_index(device, &i) || power == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlDeviceGetPowerManagementLimit(device, &limit);
    *power = idle_mw < limit ? idle_mw : limit;
    return NVML_SUCCESS;
}
