/*
 * The official C SDK's get_started.c flow against spotflow-rs's C library: a device provisions
 * itself, sends JSON readings to the default stream, reports its state and shows the desired
 * properties it receives.
 *
 * The instance and the provisioning token come from the environment, so that it runs against the
 * local emulator (`spotflow-emulator serve`, then `spotflow-emulator provisioning-token create`):
 *   SPOTFLOW_PROVISIONING_TOKEN  required
 *   SPOTFLOW_INSTANCE            default api.eu1.spotflow.io (e.g. localhost:8443)
 *   SSL_CERT_FILE                the emulator's ca.pem, to trust it
 *   SPOTFLOW_MESSAGES            readings to send (default 60)
 *   SPOTFLOW_INTERVAL_MS         pause between readings (default 5000)
 *   SPOTFLOW_MQTT_PORT           MQTT port when it is not 8883 (an addition of spotflow-rs)
 * Build: make -C examples/c (see its Makefile), then ./get_started.
 */
/* nanosleep (POSIX) under -std=c99. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spotflow.h"

static void show_last_error(const char *what)
{
    char message[SPOTFLOW_ERROR_MAX_LENGTH];
    if (spotflow_read_last_error_message(message, sizeof message) > 0) {
        fprintf(stderr, "%s failed: %s\n", what, message);
    } else {
        fprintf(stderr, "%s failed\n", what);
    }
}

static void desired_properties_updated(const char *desired_properties, uint64_t version, void *context)
{
    (void)context;
    printf("Desired properties version %llu: %s\n", (unsigned long long)version, desired_properties);
    fflush(stdout);
}

static long env_number(const char *name, long fallback)
{
    const char *text = getenv(name);
    return text != NULL && *text != '\0' ? strtol(text, NULL, 10) : fallback;
}

static void pause_ms(long ms)
{
    struct timespec delay;
    delay.tv_sec = ms / 1000;
    delay.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&delay, NULL);
}

int main(void)
{
    const char *token = getenv("SPOTFLOW_PROVISIONING_TOKEN");
    const char *instance = getenv("SPOTFLOW_INSTANCE");
    long messages = env_number("SPOTFLOW_MESSAGES", 60);
    long interval_ms = env_number("SPOTFLOW_INTERVAL_MS", 5000);
    long mqtt_port = env_number("SPOTFLOW_MQTT_PORT", 0);
    spotflow_client_options_t *options = NULL;
    spotflow_client_t *client = NULL;
    spotflow_message_context_t *context = NULL;
    char device_id[SPOTFLOW_DEVICE_ID_MAX_LENGTH];
    char workspace_id[SPOTFLOW_WORKSPACE_ID_MAX_LENGTH];
    long i;
    int waited;
    bool pending = true;

    if (token == NULL) {
        fprintf(stderr, "Set SPOTFLOW_PROVISIONING_TOKEN (and SPOTFLOW_INSTANCE for an emulator).\n");
        return 1;
    }
    if (spotflow_client_options_create(&options, "my-device", token, "spotflow.db") != SPOTFLOW_OK) {
        show_last_error("spotflow_client_options_create");
        return 1;
    }
    if (instance != NULL) {
        spotflow_client_options_set_instance(options, instance);
    }
    if (mqtt_port > 0) {
        spotflow_client_options_set_mqtt_port(options, (uint16_t)mqtt_port);
    }
    spotflow_client_options_set_desired_properties_updated_callback(options, desired_properties_updated, NULL);

    if (spotflow_client_start(&client, options) != SPOTFLOW_OK) {
        show_last_error("spotflow_client_start");
        spotflow_client_options_destroy(options);
        return 1;
    }
    spotflow_client_options_destroy(options);
    spotflow_client_get_device_id(client, device_id, sizeof device_id);
    spotflow_client_get_workspace_id(client, workspace_id, sizeof workspace_id);
    printf("Device %s registered in workspace %s.\n", device_id, workspace_id);

    spotflow_message_context_create(&context, "default-stream-group", "default-stream");
    for (i = 0; i < messages; i++) {
        char message[256];
        int length = snprintf(message, sizeof message,
            "{\"sequence\": %ld, \"temperatureCelsius\": %.2f, \"humidityPercent\": %.1f}",
            i, 21.0 + (double)(i % 100) * 0.05, 50.0 + (double)(i % 50) * 0.1);
        if (spotflow_client_send_message(client, context, NULL, NULL, (const uint8_t *)message, (size_t)length)
            != SPOTFLOW_OK) {
            show_last_error("spotflow_client_send_message");
            break;
        }
        if (i + 1 < messages) {
            pause_ms(interval_ms);
        }
    }
    printf("Sent %ld messages.\n", i);

    {
        char reported[128];
        snprintf(reported, sizeof reported, "{\"firmware\": \"1.0.0\", \"messagesSent\": %ld}", i);
        if (spotflow_client_update_reported_properties(client, reported) != SPOTFLOW_OK) {
            show_last_error("spotflow_client_update_reported_properties");
        }
    }
    /* Reported properties are sent in the background: wait for them (at most 10 s). */
    for (waited = 0; waited < 100 && pending; waited++) {
        spotflow_client_get_any_pending_reported_properties_updates(client, &pending);
        if (pending) {
            pause_ms(100);
        }
    }
    printf(pending ? "Reported properties still pending.\n" : "Reported properties sent.\n");

    spotflow_message_context_destroy(context);
    spotflow_client_destroy(client);
    return i == messages && !pending ? 0 : 1;
}
