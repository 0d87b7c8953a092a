/*
 * Every function of spotflow.h and every error path the header promises, from C: NULL pointers,
 * a misaligned pointer, too-small buffers, invalid UTF-8, unknown enum values, destroy of NULL
 * and twice, use after destroy. Built with AddressSanitizer and UndefinedBehaviorSanitizer by
 * spotflow-c/tests/c_programs.rs, which runs it against the emulator:
 *   SPOTFLOW_PROVISIONING_TOKEN, SPOTFLOW_INSTANCE, SPOTFLOW_MQTT_PORT, SSL_CERT_FILE.
 * Prints "api_test: N checks passed" and exits 0, or names the first failed check and exits 1.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spotflow.h"

static int checks = 0;

#define CHECK(condition)                                                                        \
    do {                                                                                        \
        checks++;                                                                               \
        if (!(condition)) {                                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition);       \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

/* `result` is `expected`, and the thread's last error contains `text`. */
#define CHECK_ERROR(result, expected, text) check_error((result), (expected), (text), __LINE__)

/* Software updates: the platform rolls out "c-firmware 2" (version "2") once the device exists. */
static int32_t on_install(const spotflow_update_info_t *update, const char *artifact_path, bool *needs_reboot,
                          char *error, size_t error_length, void *context)
{
    char content[64] = {0};
    size_t n;
    FILE *f = fopen(artifact_path, "rb");
    if (f == NULL) {
        snprintf(error, error_length, "cannot open %s", artifact_path);
        return 1;
    }
    n = fread(content, 1, sizeof content - 1, f);
    fclose(f);
    if (n != update->size || strcmp(content, "c-firmware 2") != 0 || strcmp(update->version, "2") != 0 ||
        strlen(update->sha256) != 64) {
        snprintf(error, error_length, "unexpected artifact");
        return 2;
    }
    (*(int *)context)++;
    *needs_reboot = false;
    return 0;
}

static int32_t on_confirm(const spotflow_update_info_t *update, char *error, size_t error_length, void *context)
{
    (void)update, (void)error, (void)error_length;
    (*(int *)context) += 10;
    return 0;
}

static int32_t on_rollback(const spotflow_update_info_t *update, char *error, size_t error_length, void *context)
{
    (void)update, (void)context;
    snprintf(error, error_length, "no rollback in this test");
    return 1;
}

static void check_error(spotflow_result_t result, spotflow_result_t expected, const char *text, int line)
{
    char message[SPOTFLOW_ERROR_MAX_LENGTH];
    int written;
    checks++;
    if (result != expected) {
        fprintf(stderr, "%s:%d: result %d, expected %d\n", __FILE__, line, (int)result, (int)expected);
        exit(1);
    }
    written = spotflow_read_last_error_message(message, sizeof message);
    if (written <= 0 || strstr(message, text) == NULL) {
        fprintf(stderr, "%s:%d: last error \"%s\" (%d) does not contain \"%s\"\n", __FILE__, line,
                written > 0 ? message : "", written, text);
        exit(1);
    }
    /* Read: cleared. */
    CHECK(spotflow_read_last_error_message(message, sizeof message) == 0);
}

static void pause_ms(long ms)
{
    struct timespec delay;
    delay.tv_sec = ms / 1000;
    delay.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&delay, NULL);
}

static pthread_t starting_thread;
static int displayed = 0;
static int displayed_on_starting_thread = 0;

static void display(const spotflow_provisioning_operation_t *operation, void *context)
{
    CHECK(context == &displayed);
    CHECK(operation != NULL && operation->id != NULL && operation->verification_code != NULL);
    CHECK(operation->expiration_time != NULL && strlen(operation->expiration_time) >= 20);
    displayed++;
    displayed_on_starting_thread = pthread_equal(pthread_self(), starting_thread);
}

static pthread_mutex_t desired_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t desired_version = 0;

static void desired_updated(const char *properties, uint64_t version, void *context)
{
    (void)context;
    CHECK(properties != NULL && properties[0] == '{');
    pthread_mutex_lock(&desired_lock);
    desired_version = version;
    pthread_mutex_unlock(&desired_lock);
}

static pthread_mutex_t events_lock = PTHREAD_MUTEX_INITIALIZER;
static int events_seen = 0;
static spotflow_connection_event_kind_t first_event = SPOTFLOW_CONNECTION_CLOSED;
static uint64_t first_attempt = 0;
static int connected_events = 0;
static int closed_events = 0;
static int events_after_closed = 0;

static void connection_event(const spotflow_connection_event_t *event, void *context)
{
    (void)context;
    CHECK(event != NULL);
    pthread_mutex_lock(&events_lock);
    if (events_seen++ == 0) {
        first_event = event->kind;
        first_attempt = event->attempt;
    }
    events_after_closed += closed_events;
    if (event->kind == SPOTFLOW_CONNECTION_CONNECTED) {
        connected_events++;
    }
    if (event->kind == SPOTFLOW_CONNECTION_CLOSED) {
        closed_events++;
    }
    /* A disconnection or refusal says why, in words too. */
    if (event->kind == SPOTFLOW_CONNECTION_DISCONNECTED || event->kind == SPOTFLOW_CONNECTION_REFUSED) {
        CHECK(event->reason != SPOTFLOW_DISCONNECT_NONE && event->message != NULL && event->message[0] != '\0');
    } else {
        CHECK(event->reason == SPOTFLOW_DISCONNECT_NONE && event->message == NULL);
    }
    pthread_mutex_unlock(&events_lock);
}

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_records = 0;

static void log_record(spotflow_log_level_t level, const char *target, const char *message, void *context)
{
    (void)context;
    if (level >= SPOTFLOW_LOG_ERROR && level <= SPOTFLOW_LOG_TRACE && target != NULL && message != NULL) {
        pthread_mutex_lock(&log_lock);
        log_records++;
        pthread_mutex_unlock(&log_lock);
    }
}

static int32_t method_handler(const char *method, const uint8_t *payload, size_t payload_length,
                              spotflow_method_response_t *response, void *context)
{
    (void)method;
    (void)payload;
    (void)payload_length;
    (void)context;
    return spotflow_method_response_set_body(response, "{\"ok\": true}") == SPOTFLOW_OK ? 200 : 500;
}

static void test_errors_and_logs(void)
{
    char small[4];
    char message[SPOTFLOW_ERROR_MAX_LENGTH];

    /* No error yet: 0 and an empty string; a NULL buffer: -1. */
    strcpy(small, "xyz");
    CHECK(spotflow_read_last_error_message(small, sizeof small) == 0);
    CHECK(small[0] == '\0');
    CHECK(spotflow_read_last_error_message(NULL, 10) == -1);

    CHECK(spotflow_set_log_level(SPOTFLOW_LOG_WARN) == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_set_log_level((spotflow_log_level_t)99), SPOTFLOW_ERROR, "not a spotflow_log_level_t value");
    CHECK_ERROR(spotflow_set_log_level((spotflow_log_level_t)-1), SPOTFLOW_ERROR, "not a spotflow_log_level_t value");

    /* A buffer under 1,024 bytes too small for the message: -1 and the error kept. */
    CHECK(spotflow_set_log_level((spotflow_log_level_t)6) == SPOTFLOW_ERROR);
    CHECK(spotflow_read_last_error_message(small, sizeof small) == -1);
    CHECK(spotflow_read_last_error_message(message, sizeof message) > (int)sizeof small);

    CHECK(spotflow_set_log_callback(log_record, NULL) == SPOTFLOW_OK);
    CHECK(spotflow_set_log_level(SPOTFLOW_LOG_INFO) == SPOTFLOW_OK);
}

static spotflow_client_options_t *test_options(void)
{
    spotflow_client_options_t *options = NULL;
    spotflow_client_options_t *destroyed = NULL;
    const char *token = getenv("SPOTFLOW_PROVISIONING_TOKEN");
    const char *instance = getenv("SPOTFLOW_INSTANCE");
    const char *port = getenv("SPOTFLOW_MQTT_PORT");
    const uint16_t ports[2] = {22, 8080};
    uint16_t misaligned_ports[3];

    CHECK(token != NULL && instance != NULL && port != NULL);
    CHECK_ERROR(spotflow_client_options_create(NULL, "d", token, "api.db"), SPOTFLOW_ERROR, "options must not be NULL");
    CHECK_ERROR(spotflow_client_options_create(&options, "d", NULL, "api.db"), SPOTFLOW_ERROR,
                "provisioning_token must not be NULL");
    CHECK_ERROR(spotflow_client_options_create(&options, "d", token, NULL), SPOTFLOW_ERROR,
                "database_file must not be NULL");
    CHECK_ERROR(spotflow_client_options_create(&options, "d\xff", token, "api.db"), SPOTFLOW_ERROR,
                "device_id is not valid UTF-8");
    CHECK(options == NULL);

    /* Destroy of NULL, twice, and use after destroy. */
    spotflow_client_options_destroy(NULL);
    CHECK(spotflow_client_options_create(&destroyed, NULL, token, "other.db") == SPOTFLOW_OK);
    spotflow_client_options_destroy(destroyed);
    spotflow_client_options_destroy(destroyed);
    CHECK_ERROR(spotflow_client_options_set_instance(destroyed, instance), SPOTFLOW_ERROR, "not a live");

    CHECK(spotflow_client_options_create(&options, NULL, "placeholder", "placeholder.db") == SPOTFLOW_OK);
    CHECK(options != NULL);
    CHECK_ERROR(spotflow_client_options_set_database_file(NULL, "api.db"), SPOTFLOW_ERROR, "options must not be NULL");
    CHECK_ERROR(spotflow_client_options_set_database_file(options, NULL), SPOTFLOW_ERROR, "database_file");
    CHECK(spotflow_client_options_set_database_file(options, "api.db") == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_options_set_provisioning_token(options, NULL), SPOTFLOW_ERROR, "provisioning_token");
    CHECK_ERROR(spotflow_client_options_set_provisioning_token(options, "\xc3\x28"), SPOTFLOW_ERROR, "not valid UTF-8");
    CHECK(spotflow_client_options_set_provisioning_token(options, token) == SPOTFLOW_OK);
    CHECK(spotflow_client_options_set_device_id(options, NULL) == SPOTFLOW_OK);
    CHECK(spotflow_client_options_set_device_id(options, "c-api-device") == SPOTFLOW_OK);
    CHECK(spotflow_client_options_set_instance(options, NULL) == SPOTFLOW_OK);
    CHECK(spotflow_client_options_set_instance(options, instance) == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_options_set_display_provisioning_operation_callback(NULL, display, NULL), SPOTFLOW_ERROR,
                "options must not be NULL");
    CHECK(spotflow_client_options_set_display_provisioning_operation_callback(options, display, &displayed)
          == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_options_set_desired_properties_updated_callback(NULL, desired_updated, NULL),
                SPOTFLOW_ERROR, "options must not be NULL");
    CHECK(spotflow_client_options_set_desired_properties_updated_callback(options, desired_updated, NULL)
          == SPOTFLOW_OK);

    /* The additions. */
    CHECK_ERROR(spotflow_client_options_set_connection_event_callback(NULL, connection_event, NULL), SPOTFLOW_ERROR,
                "options must not be NULL");
    CHECK(spotflow_client_options_set_connection_event_callback(options, connection_event, NULL) == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_options_set_durability(options, (spotflow_durability_t)7), SPOTFLOW_ERROR,
                "not a spotflow_durability_t value");
    CHECK(spotflow_client_options_set_durability(options, SPOTFLOW_DURABILITY_CRASH_SAFE) == SPOTFLOW_OK);
    CHECK(spotflow_client_options_set_durability(options, SPOTFLOW_DURABILITY_POWER_LOSS_SAFE) == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_options_set_mqtt_port(options, 0), SPOTFLOW_ERROR, "port must not be 0");
    CHECK(spotflow_client_options_set_mqtt_port(options, (uint16_t)atoi(port)) == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_options_set_direct_method_handler(options, NULL, method_handler, NULL), SPOTFLOW_ERROR,
                "method must not be NULL");
    CHECK_ERROR(spotflow_client_options_set_direct_method_handler(options, "reboot", NULL, NULL), SPOTFLOW_ERROR,
                "handler must not be NULL");
    CHECK(spotflow_client_options_set_direct_method_handler(options, "reboot", method_handler, NULL) == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_options_allow_remote_access(options, NULL, 2), SPOTFLOW_ERROR, "ports must not be NULL");
    CHECK_ERROR(spotflow_client_options_allow_remote_access(options, (const uint16_t *)((const char *)misaligned_ports + 1), 1),
                SPOTFLOW_ERROR, "not aligned");
    CHECK(spotflow_client_options_allow_remote_access(options, NULL, 0) == SPOTFLOW_OK);
    CHECK(spotflow_client_options_allow_remote_access(options, ports, 2) == SPOTFLOW_OK);
    return options;
}

static spotflow_message_context_t *test_contexts(void)
{
    spotflow_message_context_t *context = NULL;
    spotflow_message_context_t *destroyed = NULL;
    int compression;

    CHECK_ERROR(spotflow_message_context_create(NULL, NULL, NULL), SPOTFLOW_ERROR, "message_context must not be NULL");
    CHECK_ERROR(spotflow_message_context_create(&context, "\xff", NULL), SPOTFLOW_ERROR, "stream_group is not valid UTF-8");
    spotflow_message_context_destroy(NULL);
    CHECK(spotflow_message_context_create(&destroyed, NULL, NULL) == SPOTFLOW_OK);
    spotflow_message_context_destroy(destroyed);
    spotflow_message_context_destroy(destroyed);
    CHECK_ERROR(spotflow_message_context_set_stream(destroyed, "s"), SPOTFLOW_ERROR, "not a live");

    CHECK(spotflow_message_context_create(&context, NULL, NULL) == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_message_context_set_stream_group(NULL, "g"), SPOTFLOW_ERROR, "message_context must not be NULL");
    CHECK(spotflow_message_context_set_stream_group(context, NULL) == SPOTFLOW_OK);
    CHECK(spotflow_message_context_set_stream_group(context, "default-stream-group") == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_message_context_set_stream(context, "\xfe"), SPOTFLOW_ERROR, "stream is not valid UTF-8");
    CHECK(spotflow_message_context_set_stream(context, NULL) == SPOTFLOW_OK);
    CHECK(spotflow_message_context_set_stream(context, "default-stream") == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_message_context_set_compression(context, (spotflow_compression_t)5), SPOTFLOW_ERROR,
                "not a spotflow_compression_t value");
    for (compression = SPOTFLOW_COMPRESSION_SMALLEST_SIZE; compression >= SPOTFLOW_COMPRESSION_NONE; compression--) {
        CHECK(spotflow_message_context_set_compression(context, (spotflow_compression_t)compression) == SPOTFLOW_OK);
    }
    CHECK(spotflow_message_context_set_compression(context, SPOTFLOW_COMPRESSION_LZ4) == SPOTFLOW_OK);
    CHECK(spotflow_message_context_set_compression(context, SPOTFLOW_COMPRESSION_ZSTD) == SPOTFLOW_OK);
    CHECK(spotflow_message_context_set_compression(context, SPOTFLOW_COMPRESSION_FASTEST) == SPOTFLOW_OK);
    return context;
}

static void test_messages(spotflow_client_t *client, spotflow_message_context_t *context)
{
    const uint8_t payload[] = "{\"temperatureCelsius\": 21.5}";
    const size_t length = sizeof payload - 1;
    size_t pending = 99;
    size_t aligned[2];
    spotflow_stats_t stats;
    int i;

    CHECK_ERROR(spotflow_client_enqueue_message(NULL, context, NULL, NULL, payload, length), SPOTFLOW_ERROR,
                "client must not be NULL");
    CHECK_ERROR(spotflow_client_enqueue_message(client, NULL, NULL, NULL, payload, length), SPOTFLOW_ERROR,
                "message_context must not be NULL");
    CHECK_ERROR(spotflow_client_enqueue_message(client, context, NULL, NULL, NULL, 0), SPOTFLOW_ERROR,
                "buffer must not be NULL");
    CHECK_ERROR(spotflow_client_enqueue_message(client, context, "\xff", NULL, payload, length), SPOTFLOW_ERROR,
                "batch_id is not valid UTF-8");
    for (i = 0; i < 50; i++) {
        CHECK(spotflow_client_enqueue_message(client, context, "batch-1", NULL, payload, length) == SPOTFLOW_OK);
    }
    CHECK(spotflow_client_enqueue_message(client, context, NULL, NULL, payload, 0) == SPOTFLOW_OK);
    CHECK(spotflow_client_enqueue_message_advanced(client, context, "batch-2", "slice-1", "message-1", "chunk-1", payload,
                                                   length) == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_enqueue_message_advanced(client, context, "batch-2", "\xff", "message-1", "chunk-2",
                                                         payload, length),
                SPOTFLOW_ERROR, "batch_slice_id is not valid UTF-8");
    CHECK(spotflow_client_enqueue_message_completion(client, context, "batch-2", "message-1") == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_enqueue_message_completion(client, context, "batch-2", NULL), SPOTFLOW_ERROR,
                "message_id must not be NULL");
    CHECK_ERROR(spotflow_client_enqueue_batch_completion(client, context, NULL), SPOTFLOW_ERROR,
                "batch_id must not be NULL");
    CHECK(spotflow_client_enqueue_batch_completion(client, context, "batch-1") == SPOTFLOW_OK);
    CHECK(spotflow_client_send_message(client, context, NULL, NULL, payload, length) == SPOTFLOW_OK);
    CHECK(spotflow_client_send_message_advanced(client, context, "batch-3", NULL, "message-2", NULL, payload, length)
          == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_send_message(client, context, NULL, NULL, NULL, length), SPOTFLOW_ERROR,
                "buffer must not be NULL");
    /* Device logs: two records taken, one below the minimum level (INFO), then moved into the queue. */
    CHECK_ERROR(spotflow_client_log(NULL, SPOTFLOW_LOG_INFO, "api_test", "x"), SPOTFLOW_ERROR, "client must not be NULL");
    CHECK_ERROR(spotflow_client_log(client, SPOTFLOW_LOG_INFO, NULL, "x"), SPOTFLOW_ERROR, "target must not be NULL");
    CHECK_ERROR(spotflow_client_log(client, SPOTFLOW_LOG_INFO, "api_test", NULL), SPOTFLOW_ERROR,
                "message must not be NULL");
    CHECK_ERROR(spotflow_client_log(client, SPOTFLOW_LOG_OFF, "api_test", "x"), SPOTFLOW_ERROR, "SPOTFLOW_LOG_OFF");
    CHECK(spotflow_client_log(client, SPOTFLOW_LOG_INFO, "api_test", "pressure 7 bar") == SPOTFLOW_OK);
    CHECK(spotflow_client_log(client, SPOTFLOW_LOG_DEBUG, "api_test", "below the minimum level") == SPOTFLOW_OK);
    CHECK(spotflow_client_log(client, SPOTFLOW_LOG_ERROR, "api_test", "valve stuck") == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_flush_logs(NULL), SPOTFLOW_ERROR, "client must not be NULL");
    CHECK(spotflow_client_flush_logs(client) == SPOTFLOW_OK);
    /* Cloud-to-device messages: the test harness sends "c2d-0" and "c2d-1" (property n) once the device exists. */
    spotflow_c2d_message_t *c2d = NULL;
    CHECK_ERROR(spotflow_client_receive_c2d_message(NULL, 0, &c2d), SPOTFLOW_ERROR, "client must not be NULL");
    CHECK_ERROR(spotflow_client_receive_c2d_message(client, 0, NULL), SPOTFLOW_ERROR, "message must not be NULL");
    for (int i = 0; i < 2; i++) {
        CHECK(spotflow_client_receive_c2d_message(client, 30000, &c2d) == SPOTFLOW_OK);
        const uint8_t *data = NULL;
        size_t data_length = 0;
        CHECK(spotflow_c2d_message_get_payload(c2d, &data, &data_length) == SPOTFLOW_OK);
        char expected[16];
        snprintf(expected, sizeof expected, "c2d-%d", i);
        CHECK(data_length == strlen(expected) && memcmp(data, expected, data_length) == 0);
        char value[16];
        CHECK(spotflow_c2d_message_get_property(c2d, "n", value, sizeof value) == SPOTFLOW_OK);
        CHECK(value[0] == '0' + i && value[1] == 0);
        CHECK(spotflow_c2d_message_get_property(c2d, "$.mid", value, sizeof value) == SPOTFLOW_OK);
        CHECK_ERROR(spotflow_c2d_message_get_property(c2d, "missing", value, sizeof value), SPOTFLOW_ERROR,
                    "no property");
        CHECK_ERROR(spotflow_c2d_message_get_property(c2d, "n", value, 1), SPOTFLOW_INSUFFICIENT_BUFFER,
                    "the buffer has 1 bytes");
        CHECK_ERROR(spotflow_c2d_message_get_payload(c2d, NULL, &data_length), SPOTFLOW_ERROR,
                    "payload must not be NULL");
        CHECK(spotflow_c2d_message_complete(c2d) == SPOTFLOW_OK);
        spotflow_c2d_message_destroy(c2d);
    }
    CHECK_ERROR(spotflow_client_receive_c2d_message(client, 100, &c2d), SPOTFLOW_TIMEOUT, "no cloud-to-device message");
    CHECK_ERROR(spotflow_c2d_message_complete(NULL), SPOTFLOW_ERROR, "message must not be NULL");
    spotflow_c2d_message_destroy(NULL);

    /* Software updates: the agent takes the rollout the platform started once the device existed. */
    {
        int calls = 0;
        char state[1024];
        size_t state_length = 0;
        CHECK_ERROR(spotflow_client_get_update_state(client, state, sizeof state, &state_length), SPOTFLOW_ERROR,
                    "no update agent");
        CHECK_ERROR(spotflow_client_start_update_agent(client, NULL, 10000, NULL, NULL, on_rollback, &calls),
                    SPOTFLOW_ERROR, "install must not be NULL");
        CHECK_ERROR(spotflow_client_start_update_agent(client, "not a key", 10000, on_install, NULL, on_rollback, &calls),
                    SPOTFLOW_ERROR, "64 hexadecimal digits");
        CHECK_ERROR(spotflow_client_start_update_agent(client, NULL, 0, on_install, NULL, on_rollback, &calls),
                    SPOTFLOW_ERROR, "confirm_timeout_ms must be above 0");
        CHECK(spotflow_client_start_update_agent(client, NULL, 10000, on_install, on_confirm, on_rollback, &calls) ==
              SPOTFLOW_OK);
        CHECK_ERROR(spotflow_client_start_update_agent(client, NULL, 10000, on_install, NULL, on_rollback, &calls),
                    SPOTFLOW_ERROR, "runs already");
        CHECK(spotflow_client_wait_update_finished(client, NULL, 60000, state, sizeof state, &state_length) ==
              SPOTFLOW_OK);
        CHECK(strstr(state, "\"state\":\"succeeded\"") != NULL && strstr(state, "\"version\":\"2\"") != NULL);
        CHECK(state_length == strlen(state) + 1);
        CHECK(calls == 11); /* installed once, confirmed once */
        CHECK_ERROR(spotflow_client_get_update_state(client, state, 4, &state_length), SPOTFLOW_INSUFFICIENT_BUFFER,
                    "the state needs");
        CHECK(state_length > 4);
        CHECK_ERROR(spotflow_client_wait_update_finished(client, "never", 50, state, sizeof state, &state_length),
                    SPOTFLOW_TIMEOUT, "update still");
    }
    CHECK_ERROR(spotflow_client_wait_enqueued_messages_sent(NULL), SPOTFLOW_ERROR, "client must not be NULL");
    CHECK(spotflow_client_wait_enqueued_messages_sent(client) == SPOTFLOW_OK);
    CHECK(spotflow_client_wait_enqueued_messages_sent_timeout(client, 10000) == SPOTFLOW_OK);

    CHECK_ERROR(spotflow_client_get_pending_messages_count(client, NULL), SPOTFLOW_ERROR, "count must not be NULL");
    CHECK_ERROR(spotflow_client_get_pending_messages_count(client, (size_t *)((char *)aligned + 1)), SPOTFLOW_ERROR,
                "not aligned");
    CHECK(spotflow_client_get_pending_messages_count(client, &pending) == SPOTFLOW_OK);
    CHECK(pending == 0);

    CHECK_ERROR(spotflow_client_get_stats(client, NULL), SPOTFLOW_ERROR, "stats must not be NULL");
    CHECK(spotflow_client_get_stats(client, &stats) == SPOTFLOW_OK);
    /* 56 messages and the one or two that carried the two log records (the logger's own pass may
       have moved the first before the flush). */
    CHECK((stats.enqueued_total == 57 || stats.enqueued_total == 58) && stats.delivered_total == stats.enqueued_total
          && stats.queued_messages == 0);
    CHECK(stats.connected && stats.connection_attempts >= 1);
}

static void test_ids(spotflow_client_t *client)
{
    char device_id[SPOTFLOW_DEVICE_ID_MAX_LENGTH];
    char workspace_id[SPOTFLOW_WORKSPACE_ID_MAX_LENGTH];
    char small[3];

    CHECK(spotflow_client_get_device_id(client, device_id, sizeof device_id) == SPOTFLOW_OK);
    CHECK(strcmp(device_id, "c-api-device") == 0);
    CHECK_ERROR(spotflow_client_get_device_id(client, small, sizeof small), SPOTFLOW_INSUFFICIENT_BUFFER, "needs 13");
    /* Exactly the ID's length: no room for the NUL. */
    CHECK_ERROR(spotflow_client_get_device_id(client, device_id, strlen("c-api-device")), SPOTFLOW_INSUFFICIENT_BUFFER,
                "needs");
    CHECK(spotflow_client_get_device_id(client, device_id, strlen("c-api-device") + 1) == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_get_device_id(client, NULL, 10), SPOTFLOW_ERROR, "buffer must not be NULL");
    CHECK(spotflow_client_get_workspace_id(client, workspace_id, sizeof workspace_id) == SPOTFLOW_OK);
    CHECK(strlen(workspace_id) > 0);
    CHECK_ERROR(spotflow_client_get_workspace_id(NULL, workspace_id, sizeof workspace_id), SPOTFLOW_ERROR,
                "client must not be NULL");
    CHECK_ERROR(spotflow_client_get_workspace_id(client, small, 1), SPOTFLOW_INSUFFICIENT_BUFFER, "needs");
}

static void test_properties(spotflow_client_t *client)
{
    /* (The desired properties may hold an update's manifest by now.) */
    char buffer[4096];
    char tiny[4];
    size_t length = 12345;
    uint64_t version = 777;
    bool any = true;
    int waited;

    /* buffer_length 0: nothing written. */
    CHECK_ERROR(spotflow_client_get_desired_properties(client, buffer, 0, &length, &version),
                SPOTFLOW_INSUFFICIENT_BUFFER, "nothing written");
    CHECK(length == 12345 && version == 777);
    CHECK_ERROR(spotflow_client_get_desired_properties(client, buffer, sizeof buffer, NULL, &version), SPOTFLOW_ERROR,
                "properties_length must not be NULL");
    CHECK_ERROR(spotflow_client_get_desired_properties(client, buffer, sizeof buffer, &length, NULL), SPOTFLOW_ERROR,
                "properties_version must not be NULL");
    CHECK(spotflow_client_get_desired_properties(client, buffer, sizeof buffer, &length, &version) == SPOTFLOW_OK);
    CHECK(length == strlen(buffer) + 1 && buffer[0] == '{' && version >= 1);
    /* Too small: a truncated copy with its NUL, and the length needed. */
    if (length > sizeof tiny) {
        CHECK_ERROR(spotflow_client_get_desired_properties(client, tiny, sizeof tiny, &length, &version),
                    SPOTFLOW_INSUFFICIENT_BUFFER, "need");
        CHECK(tiny[sizeof tiny - 1] == '\0' && length == strlen(buffer) + 1);
    }
    /* Not newer than the version held: OK with the length 0. */
    CHECK(spotflow_client_get_desired_properties_if_newer(client, version, buffer, sizeof buffer, &length, &version)
          == SPOTFLOW_OK);
    CHECK(length == 0);
    CHECK(spotflow_client_get_desired_properties_if_newer(client, SPOTFLOW_PROPERTIES_VERSION_ANY, buffer, sizeof buffer,
                                                          &length, &version) == SPOTFLOW_OK);
    CHECK(length == strlen(buffer) + 1);
    pthread_mutex_lock(&desired_lock);
    CHECK(desired_version == version);
    pthread_mutex_unlock(&desired_lock);

    CHECK_ERROR(spotflow_client_update_reported_properties(client, NULL), SPOTFLOW_ERROR, "properties must not be NULL");
    CHECK_ERROR(spotflow_client_update_reported_properties(client, "{not json"), SPOTFLOW_ERROR, "not valid JSON");
    CHECK_ERROR(spotflow_client_update_reported_properties(client, "[1, 2]"), SPOTFLOW_ERROR, "a JSON object");
    CHECK_ERROR(spotflow_client_update_reported_properties(client, "\"\xff\""), SPOTFLOW_ERROR, "not valid UTF-8");
    CHECK(spotflow_client_update_reported_properties(client, "{\"firmware\": \"1.2.3\", \"from\": \"api_test\"}")
          == SPOTFLOW_OK);
    CHECK_ERROR(spotflow_client_get_any_pending_reported_properties_updates(client, NULL), SPOTFLOW_ERROR,
                "any must not be NULL");
    for (waited = 0; waited < 200 && any; waited++) {
        CHECK(spotflow_client_get_any_pending_reported_properties_updates(client, &any) == SPOTFLOW_OK);
        if (any) {
            pause_ms(50);
        }
    }
    CHECK(!any);
    CHECK_ERROR(spotflow_method_response_set_body(NULL, "{}"), SPOTFLOW_ERROR, "response must not be NULL");
}

int main(void)
{
    spotflow_client_options_t *options;
    spotflow_message_context_t *context;
    spotflow_client_t *client = NULL;
    spotflow_client_t *destroyed_client;
    int waited;

    test_errors_and_logs();
    options = test_options();
    context = test_contexts();

    CHECK_ERROR(spotflow_client_start(NULL, options), SPOTFLOW_ERROR, "client must not be NULL");
    CHECK_ERROR(spotflow_client_start(&client, NULL), SPOTFLOW_ERROR, "options must not be NULL");
    starting_thread = pthread_self();
    CHECK(spotflow_client_start(&client, options) == SPOTFLOW_OK);
    CHECK(client != NULL);
    /* The options were copied: destroyed, the client goes on. */
    spotflow_client_options_destroy(options);
    CHECK(displayed == 1 && displayed_on_starting_thread);

    test_ids(client);
    test_messages(client, context);
    test_properties(client);

    /* The messages were delivered: the client connected, and said so from its first attempt. */
    pthread_mutex_lock(&events_lock);
    CHECK(first_event == SPOTFLOW_CONNECTION_CONNECTING && first_attempt == 1);
    CHECK(connected_events >= 1 && closed_events == 0);
    pthread_mutex_unlock(&events_lock);

    pthread_mutex_lock(&log_lock);
    CHECK(log_records > 0);
    pthread_mutex_unlock(&log_lock);
    CHECK(spotflow_set_log_callback(NULL, NULL) == SPOTFLOW_OK);
    CHECK(spotflow_set_log_level(SPOTFLOW_LOG_WARN) == SPOTFLOW_OK);

    spotflow_message_context_destroy(context);
    destroyed_client = client;
    spotflow_client_destroy(client);
    spotflow_client_destroy(destroyed_client);
    spotflow_client_destroy(NULL);
    CHECK_ERROR(spotflow_client_wait_enqueued_messages_sent(destroyed_client), SPOTFLOW_ERROR, "not a live");
    /* Closed comes last, once (on the events' thread: waited for, at most 10 s). */
    for (waited = 0; waited < 200; waited++) {
        pthread_mutex_lock(&events_lock);
        if (closed_events > 0) {
            pthread_mutex_unlock(&events_lock);
            break;
        }
        pthread_mutex_unlock(&events_lock);
        pause_ms(50);
    }
    pthread_mutex_lock(&events_lock);
    CHECK(closed_events == 1 && events_after_closed == 0);
    pthread_mutex_unlock(&events_lock);
    printf("api_test: %d checks passed\n", checks);
    return 0;
}
