/*
 * Callbacks called from the SDK's threads while the application's threads send: built with
 * ThreadSanitizer by spotflow-c/tests/c_programs.rs, which calls the device's direct method and
 * updates its desired properties while three threads (main and two more) enqueue messages on one
 * client. The callbacks update the application's state under its mutex, as the header asks.
 * Prints READY once started; ends when it has seen METHOD_CALLS calls and desired properties of
 * version DESIRED_VERSION or newer (each bounded in time), and prints "threads_test: passed".
 * Environment: as api_test.c, plus METHOD_CALLS and DESIRED_VERSION.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spotflow.h"

#define PER_THREAD 300

struct state {
    pthread_mutex_t lock;
    long method_calls;
    uint64_t desired_version;
    size_t desired_bytes;
};

static struct state state = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};

static spotflow_client_t *client;
static spotflow_message_context_t *context;

static void fail(const char *what)
{
    char message[SPOTFLOW_ERROR_MAX_LENGTH] = "";
    spotflow_read_last_error_message(message, sizeof message);
    fprintf(stderr, "threads_test: %s failed: %s\n", what, message);
    exit(1);
}

static void desired_updated(const char *properties, uint64_t version, void *context_pointer)
{
    struct state *s = context_pointer;
    pthread_mutex_lock(&s->lock);
    s->desired_version = version;
    s->desired_bytes += strlen(properties);
    pthread_mutex_unlock(&s->lock);
}

static int32_t count_call(const char *method, const uint8_t *payload, size_t payload_length,
                          spotflow_method_response_t *response, void *context_pointer)
{
    struct state *s = context_pointer;
    char body[64];
    long calls;
    (void)method;
    (void)payload;
    (void)payload_length;
    pthread_mutex_lock(&s->lock);
    calls = ++s->method_calls;
    pthread_mutex_unlock(&s->lock);
    snprintf(body, sizeof body, "{\"calls\": %ld}", calls);
    return spotflow_method_response_set_body(response, body) == SPOTFLOW_OK ? 200 : 500;
}

static void *send_messages(void *name)
{
    int i;
    char message[64];
    for (i = 0; i < PER_THREAD; i++) {
        int length = snprintf(message, sizeof message, "{\"thread\": \"%s\", \"i\": %d}", (const char *)name, i);
        if (spotflow_client_enqueue_message(client, context, NULL, NULL, (const uint8_t *)message, (size_t)length)
            != SPOTFLOW_OK) {
            fail("spotflow_client_enqueue_message");
        }
    }
    return NULL;
}

int main(void)
{
    spotflow_client_options_t *options = NULL;
    pthread_t threads[2];
    long wanted_calls = strtol(getenv("METHOD_CALLS") ? getenv("METHOD_CALLS") : "10", NULL, 10);
    uint64_t wanted_version = strtoull(getenv("DESIRED_VERSION") ? getenv("DESIRED_VERSION") : "2", NULL, 10);
    int waited;
    int done = 0;
    size_t pending = 1;

    if (spotflow_client_options_create(&options, "threads-device", getenv("SPOTFLOW_PROVISIONING_TOKEN"), "threads.db")
            != SPOTFLOW_OK
        || spotflow_client_options_set_instance(options, getenv("SPOTFLOW_INSTANCE")) != SPOTFLOW_OK
        || spotflow_client_options_set_mqtt_port(options, (uint16_t)atoi(getenv("SPOTFLOW_MQTT_PORT"))) != SPOTFLOW_OK
        || spotflow_client_options_set_durability(options, SPOTFLOW_DURABILITY_CRASH_SAFE) != SPOTFLOW_OK
        || spotflow_client_options_set_desired_properties_updated_callback(options, desired_updated, &state)
               != SPOTFLOW_OK
        || spotflow_client_options_set_direct_method_handler(options, "count", count_call, &state) != SPOTFLOW_OK) {
        fail("the options");
    }
    if (spotflow_client_start(&client, options) != SPOTFLOW_OK) {
        fail("spotflow_client_start");
    }
    spotflow_client_options_destroy(options);
    if (spotflow_message_context_create(&context, NULL, NULL) != SPOTFLOW_OK) {
        fail("spotflow_message_context_create");
    }
    printf("READY\n");
    fflush(stdout);

    pthread_create(&threads[0], NULL, send_messages, "a");
    pthread_create(&threads[1], NULL, send_messages, "b");
    send_messages("main");
    pthread_join(threads[0], NULL);
    pthread_join(threads[1], NULL);

    /* The calls and updates the test makes meanwhile (at most 60 s). */
    for (waited = 0; waited < 600 && !done; waited++) {
        pthread_mutex_lock(&state.lock);
        done = state.method_calls >= wanted_calls && state.desired_version >= wanted_version;
        pthread_mutex_unlock(&state.lock);
        if (!done) {
            const struct timespec tenth = {0, 100000000L};
            nanosleep(&tenth, NULL);
        }
    }
    if (spotflow_client_wait_enqueued_messages_sent_timeout(client, 30000) != SPOTFLOW_OK) {
        fail("spotflow_client_wait_enqueued_messages_sent_timeout");
    }
    spotflow_client_get_pending_messages_count(client, &pending);
    spotflow_message_context_destroy(context);
    spotflow_client_destroy(client);
    pthread_mutex_lock(&state.lock);
    printf("threads_test: %ld method calls, desired version %llu, %d messages, %zu pending\n", state.method_calls,
           (unsigned long long)state.desired_version, 3 * PER_THREAD, pending);
    pthread_mutex_unlock(&state.lock);
    if (!done || pending != 0) {
        fprintf(stderr, "threads_test: failed (calls or desired properties missing, or messages pending)\n");
        return 1;
    }
    printf("threads_test: passed\n");
    return 0;
}
