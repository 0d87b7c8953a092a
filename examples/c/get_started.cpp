// The C library from C++: the same flow as get_started.c, with the handles owned by
// std::unique_ptr, errors turned into exceptions, and messages enqueued (durably) then awaited.
// Environment: as get_started.c (SPOTFLOW_PROVISIONING_TOKEN, SPOTFLOW_INSTANCE, SSL_CERT_FILE,
// SPOTFLOW_MESSAGES, SPOTFLOW_MQTT_PORT).
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#include "spotflow.h"

namespace {

void check(spotflow_result_t result, const char *what)
{
    if (result != SPOTFLOW_OK) {
        char message[SPOTFLOW_ERROR_MAX_LENGTH] = "";
        spotflow_read_last_error_message(message, sizeof message);
        throw std::runtime_error(std::string(what) + " failed: " + message);
    }
}

struct OptionsDeleter {
    void operator()(spotflow_client_options_t *options) const { spotflow_client_options_destroy(options); }
};
struct ClientDeleter {
    void operator()(spotflow_client_t *client) const { spotflow_client_destroy(client); }
};
struct ContextDeleter {
    void operator()(spotflow_message_context_t *context) const { spotflow_message_context_destroy(context); }
};

std::atomic<std::uint64_t> desired_version{0};

long env_number(const char *name, long fallback)
{
    const char *text = std::getenv(name);
    return text != nullptr && *text != '\0' ? std::strtol(text, nullptr, 10) : fallback;
}

} // namespace

int main()
{
    try {
        const char *token = std::getenv("SPOTFLOW_PROVISIONING_TOKEN");
        if (token == nullptr) {
            throw std::runtime_error("set SPOTFLOW_PROVISIONING_TOKEN (and SPOTFLOW_INSTANCE for an emulator)");
        }
        const long messages = env_number("SPOTFLOW_MESSAGES", 60);
        const long mqtt_port = env_number("SPOTFLOW_MQTT_PORT", 0);

        spotflow_client_options_t *raw_options = nullptr;
        check(spotflow_client_options_create(&raw_options, "my-cpp-device", token, "spotflow-cpp.db"),
              "spotflow_client_options_create");
        std::unique_ptr<spotflow_client_options_t, OptionsDeleter> options(raw_options);
        if (const char *instance = std::getenv("SPOTFLOW_INSTANCE")) {
            check(spotflow_client_options_set_instance(options.get(), instance), "spotflow_client_options_set_instance");
        }
        if (mqtt_port > 0) {
            check(spotflow_client_options_set_mqtt_port(options.get(), static_cast<std::uint16_t>(mqtt_port)),
                  "spotflow_client_options_set_mqtt_port");
        }
        check(spotflow_client_options_set_desired_properties_updated_callback(
                  options.get(),
                  [](const char *properties, std::uint64_t version, void *) {
                      desired_version = version;
                      std::printf("Desired properties version %llu: %s\n",
                                  static_cast<unsigned long long>(version), properties);
                      std::fflush(stdout);
                  },
                  nullptr),
              "spotflow_client_options_set_desired_properties_updated_callback");

        spotflow_client_t *raw_client = nullptr;
        check(spotflow_client_start(&raw_client, options.get()), "spotflow_client_start");
        std::unique_ptr<spotflow_client_t, ClientDeleter> client(raw_client);
        options.reset();

        char device_id[SPOTFLOW_DEVICE_ID_MAX_LENGTH];
        check(spotflow_client_get_device_id(client.get(), device_id, sizeof device_id), "spotflow_client_get_device_id");
        std::printf("Device %s registered.\n", device_id);

        spotflow_message_context_t *raw_context = nullptr;
        check(spotflow_message_context_create(&raw_context, nullptr, nullptr), "spotflow_message_context_create");
        std::unique_ptr<spotflow_message_context_t, ContextDeleter> context(raw_context);
        check(spotflow_message_context_set_compression(context.get(), SPOTFLOW_COMPRESSION_FASTEST),
              "spotflow_message_context_set_compression");
        for (long i = 0; i < messages; i++) {
            const std::string message = "{\"sequence\": " + std::to_string(i) + ", \"source\": \"C++\"}";
            check(spotflow_client_enqueue_message(client.get(), context.get(), nullptr, nullptr,
                                                  reinterpret_cast<const std::uint8_t *>(message.data()),
                                                  message.size()),
                  "spotflow_client_enqueue_message");
        }
        check(spotflow_client_wait_enqueued_messages_sent(client.get()), "spotflow_client_wait_enqueued_messages_sent");
        std::size_t pending = 0;
        check(spotflow_client_get_pending_messages_count(client.get(), &pending), "spotflow_client_get_pending_messages_count");
        std::printf("Sent %ld messages (%zu pending).\n", messages, pending);
        return pending == 0 ? 0 : 1;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
