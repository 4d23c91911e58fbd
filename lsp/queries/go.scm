; Definitions: @definition.<kind> with its @name; a method's receiver type as @receiver.
(function_declaration name: (identifier) @name) @definition.function
(method_declaration
  receiver: (parameter_list (parameter_declaration type: [
    (type_identifier) @receiver
    (pointer_type (type_identifier) @receiver)
    (generic_type type: (type_identifier) @receiver)
    (pointer_type (generic_type type: (type_identifier) @receiver))]))
  name: (field_identifier) @name) @definition.method
(type_spec name: (type_identifier) @name) @definition.type
(type_alias name: (type_identifier) @name) @definition.type
(source_file (const_declaration (const_spec name: (identifier) @name) @definition.constant))
(source_file (var_declaration (var_spec name: (identifier) @name) @definition.variable))

(package_clause (package_identifier) @package)

; Imports: decoded by lsp/imports.py.
(import_declaration) @import

; References.
(selector_expression operand: (identifier) @reference.qualifier field: (field_identifier) @reference.member)
(qualified_type package: (package_identifier) @reference.qualifier name: (type_identifier) @reference.member)
(call_expression function: (identifier) @reference.call)
(type_identifier) @reference.type
(identifier) @reference
