/*
 * The C library in the device-rate benchmark (spotflow-store-tests/benches/device_rate.rs): the
 * Rust `rate-child`'s workload and protocol through spotflow.h. Starts a client at DURABILITY
 * (power-loss-safe or crash-safe), says READY, enqueues 256-byte messages at RATE per second for
 * SECONDS, waits until all are acknowledged and says SENT n, T i ns (when each enqueue returned,
 * Unix nanoseconds), USAGE (user µs, system µs, voluntary and involuntary switches, peak RSS KiB
 * from READY on) and DONE. Nothing is written while sending.
 * Environment also: INSTANCE, MQTT_PORT, PROVISIONING_TOKEN, DB; SSL_CERT_FILE trusts the CA.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "spotflow.h"

static const char *env(const char *name)
{
    const char *value = getenv(name);
    if (value == NULL) {
        fprintf(stderr, "rate_child: %s is not set\n", name);
        exit(2);
    }
    return value;
}

static void check(spotflow_result_t result, const char *what)
{
    if (result != SPOTFLOW_OK) {
        char message[SPOTFLOW_ERROR_MAX_LENGTH] = "";
        spotflow_read_last_error_message(message, sizeof message);
        fprintf(stderr, "rate_child: %s failed: %s\n", what, message);
        exit(1);
    }
}

static void ignore_operation(const spotflow_provisioning_operation_t *operation, void *context)
{
    (void)operation;
    (void)context;
}

static unsigned long long micros(struct timeval t)
{
    return (unsigned long long)t.tv_sec * 1000000ULL + (unsigned long long)t.tv_usec;
}

int main(void)
{
    spotflow_client_options_t *options = NULL;
    spotflow_client_t *client = NULL;
    spotflow_message_context_t *context = NULL;
    double rate = strtod(env("RATE"), NULL);
    double seconds = strtod(env("SECONDS"), NULL);
    long count = (long)(rate * seconds);
    unsigned long long *stamps = calloc((size_t)(count > 0 ? count : 1), sizeof *stamps);
    uint8_t payload[256];
    struct rusage before, after;
    struct timespec start, due, now;
    long i;

    memset(payload, 'x', sizeof payload);
    check(spotflow_client_options_create(&options, "rate-device", env("PROVISIONING_TOKEN"), env("DB")),
          "spotflow_client_options_create");
    check(spotflow_client_options_set_instance(options, env("INSTANCE")), "spotflow_client_options_set_instance");
    check(spotflow_client_options_set_mqtt_port(options, (uint16_t)atoi(env("MQTT_PORT"))),
          "spotflow_client_options_set_mqtt_port");
    check(spotflow_client_options_set_durability(options, strcmp(env("DURABILITY"), "crash-safe") == 0
                                                              ? SPOTFLOW_DURABILITY_CRASH_SAFE
                                                              : SPOTFLOW_DURABILITY_POWER_LOSS_SAFE),
          "spotflow_client_options_set_durability");
    check(spotflow_client_options_set_display_provisioning_operation_callback(options, ignore_operation, NULL),
          "spotflow_client_options_set_display_provisioning_operation_callback");
    check(spotflow_client_start(&client, options), "spotflow_client_start");
    spotflow_client_options_destroy(options);
    check(spotflow_message_context_create(&context, "rate", "c"), "spotflow_message_context_create");

    printf("READY\n");
    fflush(stdout);
    getrusage(RUSAGE_SELF, &before);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (i = 0; i < count; i++) {
        double offset = (double)i / rate;
        long long ns = (long long)start.tv_nsec + (long long)((offset - (double)(long long)offset) * 1e9);
        due.tv_sec = start.tv_sec + (time_t)offset + (time_t)(ns / 1000000000LL);
        due.tv_nsec = (long)(ns % 1000000000LL);
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL);
        check(spotflow_client_enqueue_message(client, context, NULL, NULL, payload, sizeof payload),
              "spotflow_client_enqueue_message");
        clock_gettime(CLOCK_REALTIME, &now);
        stamps[i] = (unsigned long long)now.tv_sec * 1000000000ULL + (unsigned long long)now.tv_nsec;
    }
    check(spotflow_client_wait_enqueued_messages_sent_timeout(client, 120000), "spotflow_client_wait_enqueued_messages_sent");
    getrusage(RUSAGE_SELF, &after);

    printf("SENT %ld\n", count);
    for (i = 0; i < count; i++) {
        printf("T %ld %llu\n", i, stamps[i]);
    }
    printf("USAGE %llu %llu %ld %ld %ld\n", micros(after.ru_utime) - micros(before.ru_utime),
           micros(after.ru_stime) - micros(before.ru_stime), after.ru_nvcsw - before.ru_nvcsw,
           after.ru_nivcsw - before.ru_nivcsw, after.ru_maxrss);
    printf("DONE\n");
    fflush(stdout);
    spotflow_message_context_destroy(context);
    spotflow_client_destroy(client);
    free(stamps);
    return 0;
}
