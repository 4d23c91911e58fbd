; Definitions: @definition.<kind> with its @name.
(class_declaration name: (identifier) @name) @definition.class
(record_declaration name: (identifier) @name) @definition.class
(interface_declaration name: (identifier) @name) @definition.interface
(annotation_type_declaration name: (identifier) @name) @definition.interface
(enum_declaration name: (identifier) @name) @definition.type
(method_declaration name: (identifier) @name) @definition.method
(constructor_declaration name: (identifier) @name) @definition.method
(field_declaration declarator: (variable_declarator name: (identifier) @name)) @definition.field
(constant_declaration declarator: (variable_declarator name: (identifier) @name)) @definition.constant

(package_declaration (_) @package)

; Imports: decoded by lsp/imports.py.
(import_declaration) @import

; References.
(method_invocation object: (identifier) @reference.qualifier name: (identifier) @reference.member)
(field_access object: (identifier) @reference.qualifier field: (identifier) @reference.member)
(method_invocation !object name: (identifier) @reference.call)
(object_creation_expression type: (type_identifier) @reference.call)
(type_identifier) @reference.type
(identifier) @reference
