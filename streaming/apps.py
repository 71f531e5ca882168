from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    verbose_name = "Text streams"
    default_auto_field = "django.db.models.BigAutoField"
